"""Preference files (task dpo) at upload and job creation: shapes detected, problems named by line, the task checked."""

from __future__ import annotations

from typing import Any

import pytest

from ftjobs.client.models import JobCreate, Task
from tests.jobs.helpers import create_job as record_job
from tests.service.conftest import ROWS, assert_error, jsonl, upload


def openai_row(prompt: str = "say red", chosen: str = "red", rejected: str = "blue") -> dict[str, Any]:
    return {
        "input": {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": prompt}]},
        "preferred_output": [{"role": "assistant", "content": chosen}],
        "non_preferred_output": [{"role": "assistant", "content": rejected}],
    }


def plain_row(i: int = 0) -> dict[str, Any]:
    return {"prompt": f"say red {i}", "chosen": " red", "rejected": " blue"}


def chat_row(i: int = 0) -> dict[str, Any]:
    return {
        "prompt": [{"role": "user", "content": f"say red {i}"}],
        "chosen": [{"role": "assistant", "content": "red"}],
        "rejected": [{"role": "assistant", "content": "blue"}],
    }


@pytest.mark.parametrize(
    "rows",
    [[openai_row(f"say red {i}") for i in range(4)], [plain_row(i) for i in range(4)], [chat_row(i) for i in range(4)]],
    ids=["openai", "plain", "chat"],
)
def test_preference_shapes_are_detected_and_profiled(http, rows) -> None:  # type: ignore[no-untyped-def]
    response = upload(http, jsonl(rows))
    assert response.status_code == 201, response.text
    assert response.json()["format"] == "preference"
    profile = http.get(f"/v1/files/{response.json()['id']}/profile").json()
    assert profile["format"] == "preference" and profile["rows"] == 4
    fields = {f["name"]: f for f in profile["fields"]}
    assert set(fields) == {"prompt", "chosen", "rejected"}
    assert fields["chosen"]["chars"]["max"] == len(rows[0]["preferred_output"][0]["content"] if "input" in rows[0]
                                                   else rows[0]["chosen"] if isinstance(rows[0]["chosen"], str)
                                                   else rows[0]["chosen"][0]["content"])  # fmt: skip


def test_csv_with_prompt_chosen_rejected_is_a_preference_file(http) -> None:  # type: ignore[no-untyped-def]
    content = b"prompt,chosen,rejected\nsay red, red, blue\nsay green, green, cat\n"
    response = upload(http, content, filename="pairs.csv")
    assert response.status_code == 201, response.text
    assert response.json()["format"] == "preference" and response.json()["rows"] == 2


def _bad(row: dict[str, Any], path: list[Any], value: Any) -> dict[str, Any]:
    """A copy of `row` with the value at `path` replaced (or removed: value is ...)."""
    import copy

    out = copy.deepcopy(row)
    target = out
    for key in path[:-1]:
        target = target[key]
    if value is ...:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return out


@pytest.mark.parametrize(
    ("bad", "code", "field"),
    [
        (_bad(openai_row(), ["non_preferred_output"], ...), "missing_field", "non_preferred_output"),
        (_bad(openai_row(), ["input", "messages"], ...), "missing_field", "input.messages"),
        (_bad(openai_row(), ["input"], "say red"), "invalid_type", "input"),
        (_bad(openai_row(), ["preferred_output"], []), "empty_content", "preferred_output"),
        (_bad(openai_row(), ["preferred_output", 0, "content"], "  "), "empty_content", "preferred_output"),
        (_bad(openai_row(), ["preferred_output", 0, "role"], "user"), "unknown_role", "preferred_output[0].role"),
        (_bad(openai_row(), ["input", "messages", 1, "role"], "robot"), "unknown_role", "input.messages[1].role"),
        (openai_row(chosen="red", rejected=" red "), "identical_outputs", "non_preferred_output"),
        (_bad(plain_row(), ["rejected"], ...), "missing_field", "rejected"),
        (_bad(plain_row(), ["chosen"], ""), "empty_content", "chosen"),
        (_bad(plain_row(), ["chosen"], 3), "invalid_type", "chosen"),
        (_bad(plain_row(), ["rejected"], " red"), "identical_outputs", "rejected"),
        (_bad(chat_row(), ["rejected", 0, "role"], "system"), "unknown_role", "rejected[0].role"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_a_bad_pair_is_refused_naming_its_line_and_field(http, bad, code, field) -> None:  # type: ignore[no-untyped-def]
    good = plain_row() if "prompt" in bad or "chosen" in bad else openai_row()
    rows = [good, good, bad, good]
    error = assert_error(upload(http, jsonl(rows)), 422, "invalid_file", param="line 3")
    assert error["total"] == 1
    [problem] = error["details"]
    assert (problem["line"], problem["code"], problem["field"]) == (3, code, field), problem
    assert f"line 3: {problem['message']}" in error["message"]


def test_mixing_preference_and_sft_rows_is_refused(http) -> None:  # type: ignore[no-untyped-def]
    rows = [plain_row(1), plain_row(2), ROWS["prompt_completion"][0]]
    error = assert_error(upload(http, jsonl(rows)), 422, "invalid_file", param="line 3")
    assert error["details"][0]["code"] == "mixed_formats"


@pytest.fixture
def pairs(http) -> str:  # type: ignore[no-untyped-def]
    response = upload(http, jsonl([plain_row(i) for i in range(8)]))
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def test_dpo_needs_a_preference_file(http, training_file, model_path) -> None:  # type: ignore[no-untyped-def]
    response = http.post("/v1/jobs", json={"model": model_path, "task": "dpo", "training_file": training_file})
    error = assert_error(response, 422, "incompatible_file", "training_file")
    assert "task dpo needs one of: preference" in error["message"]


def test_a_preference_file_cannot_train_sft(http, pairs, model_path) -> None:  # type: ignore[no-untyped-def]
    response = http.post("/v1/jobs", json={"model": model_path, "training_file": pairs})
    assert_error(response, 422, "incompatible_file", "training_file")


def test_dpo_job_is_created_with_beta(http, pairs, model_path) -> None:  # type: ignore[no-untyped-def]
    body = {"model": model_path, "task": "dpo", "training_file": pairs, "hyperparameters": {"beta": 0.3}}
    response = http.post("/v1/jobs", json=body)
    assert response.status_code in (200, 201), response.text
    job = response.json()
    assert job["task"] == "dpo" and job["hyperparameters"]["beta"] == 0.3
    assert job["resolved_hyperparameters"]["learning_rate"] == 5e-6  # auto: TRL's small LoRA rate


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"task": "dpo", "method": {"type": "ia3"}}, "method"),
        ({"hyperparameters": {"beta": 0.2}}, "hyperparameters"),  # beta without task dpo
        ({"task": "dpo", "hyperparameters": {"beta": 0}}, "hyperparameters.beta"),
    ],
    ids=["method", "beta-without-dpo", "beta-zero"],
)
def test_dpo_options_are_checked_naming_the_field(http, pairs, model_path, body, param) -> None:  # type: ignore[no-untyped-def]
    response = http.post("/v1/jobs", json={"model": model_path, "training_file": pairs, **body})
    assert_error(response, 422, "validation_error", param)


def test_dpo_continues_a_supervised_parent(http, redis, pairs, training_file, model_path) -> None:  # type: ignore[no-untyped-def]
    """SFT then DPO: a succeeded causal_lm job is a parent of a dpo job of the same method; a classification one
    is not."""
    sft = JobCreate(model=model_path, training_file=training_file, method={"type": "lora"})
    parent = record_job(redis, sft, status="succeeded")
    body = {"model": model_path, "task": "dpo", "training_file": pairs, "parent_job_id": parent}
    response = http.post("/v1/jobs", json=body)
    assert response.status_code in (200, 201), response.text
    other = record_job(redis, sft.model_copy(update={"task": Task.seq2seq}), status="succeeded")
    error = assert_error(http.post("/v1/jobs", json={**body, "parent_job_id": other}), 422, "incompatible_parent_job")
    assert "the parent's task be causal_lm or dpo" in error["message"]
    full = http.post("/v1/jobs", json={**body, "method": {"type": "full"}})
    assert_error(full, 422, "incompatible_parent_job", "parent_job_id")
