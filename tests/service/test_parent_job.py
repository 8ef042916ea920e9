"""parent_job_id and `method`: what shapes the parent's adapter must match, the rest inherits or may change."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ftjobs.client.models import JobCreate
from tests.jobs.helpers import create_job
from tests.service.conftest import ROWS, assert_error, jsonl, upload


@pytest.fixture
def body(http, model_root: Path) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    file_id = upload(http, jsonl(ROWS["prompt_completion"] * 4)).json()["id"]
    return {"model": str(model_root / "tiny"), "training_file": file_id}


def parent_job(redis, body: dict[str, Any], method: dict[str, Any], trained: dict[str, Any] | None = None) -> str:  # type: ignore[no-untyped-def]
    """A succeeded job as its worker leaves it; `trained`: the method as the worker resolved it, if recorded."""
    request = JobCreate.model_validate({**body, "method": method})
    if not trained:
        return create_job(redis, request, status="succeeded")
    resolved = {"model": body["model"], "method": {**request.method.model_dump(), **trained}}
    return create_job(redis, request, status="succeeded", resolved=resolved)


@pytest.mark.parametrize(
    ("parent", "child", "param", "parents_value"),
    [
        ({"type": "lora", "r": 16}, {"type": "lora", "r": 8}, "method.r", "16"),
        ({"type": "lora"}, {"type": "lora", "alpha": 32}, "method.alpha", "16"),
        ({"type": "lora", "target_modules": ["q_proj", "v_proj"]}, {"type": "lora", "target_modules": ["q_proj"]},
         "method.target_modules", '["q_proj", "v_proj"]'),
        ({"type": "lora", "use_dora": True}, {"type": "lora", "use_dora": False}, "method.use_dora", "true"),
        ({"type": "ia3", "feedforward_modules": ["down_proj"]}, {"type": "ia3", "feedforward_modules": ["up_proj"]},
         "method.feedforward_modules", '["down_proj"]'),
        ({"type": "prompt_tuning", "num_virtual_tokens": 10}, {"type": "prompt_tuning", "num_virtual_tokens": 20},
         "method.num_virtual_tokens", "10"),
        ({"type": "p_tuning"}, {"type": "p_tuning", "encoder_hidden_size": 64}, "method.encoder_hidden_size", "128"),
        # a continued prompt starts from the parent's trained one: initialising it from text cannot take effect
        ({"type": "prompt_tuning"}, {"type": "prompt_tuning", "init_text": "be kind"}, "method.init_text", "null"),
        ({"type": "adapter"}, {"type": "adapter", "bottleneck_size": 8}, "method.bottleneck_size", "null"),
        ({"type": "adapter", "bottleneck_size": 8}, {"type": "adapter", "bottleneck_size": 16},
         "method.bottleneck_size", "8"),
        ({"type": "adapter"}, {"type": "adapter", "positions": ["ffn"]}, "method.positions", '["attention", "ffn"]'),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_a_different_adapter_shape_is_rejected_naming_the_field(http, redis, body, parent, child, param, parents_value):  # type: ignore[no-untyped-def]
    parent_id = parent_job(redis, body, parent)
    response = http.post("/v1/jobs", json={**body, "method": child, "parent_job_id": parent_id})
    error = assert_error(response, 422, "incompatible_parent_job", param)
    assert f"{parent_id}'s {param.removeprefix('method.')}={parents_value}" in error["message"], error


def test_left_out_settings_inherit_the_parents_and_training_settings_may_change(http, redis, body):  # type: ignore[no-untyped-def]
    parent_id = parent_job(redis, body, {"type": "lora", "r": 16, "alpha": 32, "dropout": 0.1, "merge": True})

    same = http.post("/v1/jobs", json={**body, "method": {"type": "lora"}, "parent_job_id": parent_id})
    assert same.status_code == 201, same.text
    method = same.json()["method"]  # recorded as resolved: what the worker will train
    assert (method["r"], method["alpha"], method["dropout"], method["merge"]) == (16, 32, 0.1, True)
    no_method = http.post("/v1/jobs", json={**body, "parent_job_id": parent_id})  # method defaults to lora
    assert no_method.status_code == 201 and no_method.json()["method"]["r"] == 16, no_method.text

    # repeating the parent's shape is fine; dropout and merge only affect training and the artifacts
    changed = {"type": "lora", "r": 16, "dropout": 0.3, "merge": False, "target_modules": None}
    response = http.post("/v1/jobs", json={**body, "method": changed, "parent_job_id": parent_id})
    assert response.status_code == 201, response.text
    method = response.json()["method"]
    assert (method["r"], method["alpha"], method["dropout"], method["merge"]) == (16, 32, 0.3, False)


def test_the_parents_resolved_target_modules_are_what_a_child_must_match(http, redis, body):  # type: ignore[no-untyped-def]
    # The parent asked for peft's default target modules; its worker recorded the ones peft picked.
    parent_id = parent_job(redis, body, {"type": "lora"}, trained={"target_modules": ["q", "v"]})

    inherited = http.post("/v1/jobs", json={**body, "parent_job_id": parent_id})
    assert inherited.status_code == 201, inherited.text
    assert inherited.json()["method"]["target_modules"] == ["q", "v"]
    reordered = {"type": "lora", "target_modules": ["v", "q"]}
    response = http.post("/v1/jobs", json={**body, "method": reordered, "parent_job_id": parent_id})
    assert response.status_code == 201, response.text
    other = {"type": "lora", "target_modules": ["q", "k", "v"]}
    response = http.post("/v1/jobs", json={**body, "method": other, "parent_job_id": parent_id})
    error = assert_error(response, 422, "incompatible_parent_job", "method.target_modules")
    assert '["q", "v"]' in error["message"] and "Leave method.target_modules out" in error["message"]
