"""`resources` a job's other fields rule out: 422 naming `resources.<field>`, before any work (docs/scaling.md)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.service.conftest import assert_error


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        ({"resources": {"processes": 2, "sharding": "fsdp"}}, "resources.sharding", "full"),
        ({"method": {"type": "full"}, "resources": {"sharding": "fsdp"}}, "resources.sharding", "processes"),
        (
            {"task": "classification", "method": {"type": "full"}, "resources": {"processes": 2, "sharding": "fsdp"}},
            "resources.sharding",
            "causal_lm",
        ),
        ({"resources": {"processes": 2, "sharding": "zero3"}}, "resources.sharding", "ddp"),
    ],
)
def test_what_several_processes_rule_out_is_refused(
    create_job: Callable[..., httpx.Response], body: dict[str, Any], param: str, words: str
) -> None:
    error = assert_error(create_job(**body), 422, "validation_error", param)
    assert words in error["message"], error


def test_what_they_allow_is_created(create_job: Callable[..., httpx.Response]) -> None:
    response = create_job(resources={"processes": 2})
    assert response.status_code == 201, response.text
    for task in ("dpo", "seq2seq"):  # they train on 2 processes as on 1 (tests/jobs/test_distributed_tasks.py)
        other = create_job(task=task, resources={"processes": 2})  # refused for the fixture's file, not processes
        assert other.status_code == 422 and other.json()["error"]["param"] == "training_file", other.text
    full = create_job(method={"type": "full"}, resources={"processes": 2, "sharding": "fsdp"})
    assert full.status_code == 201, full.text  # the worker decides whether it has the GPUs
    on_cpu = create_job(method={"type": "full"}, resources={"processes": 2, "sharding": "fsdp", "gpus_per_process": 0})
    assert on_cpu.status_code == 201, on_cpu.text  # FSDP over gloo (tests/jobs/test_fsdp.py)
