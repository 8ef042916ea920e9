"""OpenAI's shapes and edge cases over the in-process app (real Redis, no worker): requests ftjobs cannot honour
are 4xx naming the field, the translation onto JobCreate, events/list cursors, files content and delete, models."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from ftjobs.service.store import Store
from tests.service.conftest import ROWS, assert_error, jsonl, upload

FT = "/v1/fine_tuning/jobs"


@pytest.fixture
def chat_file(http: httpx.Client) -> str:
    response = upload(http, jsonl(ROWS["messages"] * 4))
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def create(http: httpx.Client, training_file: str, model_path: str, **body: Any) -> httpx.Response:
    return http.post(FT, json={"model": model_path, "training_file": training_file, **body})


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"method": {"type": "reinforcement", "reinforcement": {}}}, "method.type"),
        ({"method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2, "top_k": 3}}}},
         "method.supervised.hyperparameters.top_k"),
        ({"hyperparameters": {"warmup": 0.1}}, "hyperparameters.warmup"),
        ({"method": {"type": "supervised"}, "hyperparameters": {"n_epochs": 2}}, "hyperparameters"),
        ({"method": {"type": "supervised", "supervised": {"hyperparameters": {"beta": 0.2}}}},
         "method.supervised.hyperparameters.beta"),
        ({"hyperparameters": {"n_epochs": 0}}, "hyperparameters.n_epochs"),
        ({"hyperparameters": {"learning_rate_multiplier": -1}}, "hyperparameters.learning_rate_multiplier"),
        ({"training": {"n_epochs": 3}}, "training.n_epochs"),
        ({"training": {"max_seq_length": -5}}, "training.max_seq_length"),
        ({"training": {"learning_rate": 1e-3}, "hyperparameters": {"learning_rate_multiplier": 2}},
         "training.learning_rate"),
        ({"peft": {"type": "lora", "r": 0}}, "peft.r"),
        ({"task": "painting"}, "task"),
        ({"suffix": "a b"}, "suffix"),
        ({"n_gpus": 2}, "n_gpus"),
        ({"model": "ft:tiny:x:ftjob-00000000000000000000"}, "model"),
    ],
)  # fmt: skip
def test_requests_ftjobs_cannot_honour_are_4xx_naming_the_field(http, chat_file, model_path, body, param):  # type: ignore[no-untyped-def]
    response = create(http, chat_file, model_path, **body)
    assert 400 <= response.status_code < 500, response.text
    error = response.json()["error"]
    assert error["param"] == param, error
    assert set(error) >= {"code", "message", "param", "type"}


def test_learning_rate_multiplier_scales_the_auto_rate(http, chat_file, model_path):  # type: ignore[no-untyped-def]
    plain = create(http, chat_file, model_path).json()
    scaled = create(http, chat_file, model_path, hyperparameters={"learning_rate_multiplier": 2.5}).json()
    assert plain["hyperparameters"]["learning_rate_multiplier"] == 1.0
    assert plain["method"]["peft"]["type"] == "lora"  # the default strategy when `peft` is not given
    assert scaled["hyperparameters"]["learning_rate_multiplier"] == 2.5
    rate = {j["id"]: http.get(f"/v1/jobs/{j['id']}").json()["resolved_hyperparameters"]["learning_rate"]
            for j in (plain, scaled)}  # fmt: skip
    assert rate[scaled["id"]] == pytest.approx(2.5 * rate[plain["id"]])


def test_job_shape_and_both_apis(http, chat_file, model_path):  # type: ignore[no-untyped-def]
    response = create(
        http,
        chat_file,
        model_path,
        suffix="mine",
        seed=11,
        metadata={"k": "v"},
        integrations=[{"type": "wandb", "wandb": {"project": "p"}}],
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 4, "batch_size": 2}}},
        peft={"type": "ia3"},
        data={"dedup": "exact"},
    )
    assert response.status_code == 200, response.text
    job = response.json()
    assert job["object"] == "fine_tuning.job" and isinstance(job["created_at"], int)
    assert job["organization_id"] == "default" and job["status"] == "validating_files"
    assert job["fine_tuned_model"] is None and job["result_files"] == [] and job["error"] is None
    assert job["seed"] == 11 and job["metadata"] == {"k": "v"}
    assert job["hyperparameters"]["n_epochs"] == 4 and job["hyperparameters"]["batch_size"] == 2
    assert job["method"]["type"] == "supervised" and job["method"]["peft"]["type"] == "ia3"
    assert job["integrations"] == [{"type": "wandb", "wandb": {"project": "ftjobs"}}]
    native = http.get(f"/v1/jobs/{job['id']}").json()  # one job, two shapes
    assert native["task"] == "causal_lm" and native["method"]["type"] == "ia3" and native["data"]["dedup"] == "exact"
    assert native["hyperparameters"]["seed"] == 11 and native["integrations"] == ["wandb"]
    assert http.get(f"{FT}/{job['id']}").json()["id"] == job["id"]
    assert_error(http.get(f"{FT}/ftjob-00000000000000000000"), 404, "job_not_found")


def test_task_is_inferred_from_the_file_format(http, model_path, tmp_path):  # type: ignore[no-untyped-def]
    labelled = upload(http, jsonl(ROWS["text_label"] * 4)).json()["id"]
    job = create(http, labelled, model_path).json()
    assert http.get(f"/v1/jobs/{job['id']}").json()["task"] == "classification"
    assert_error(create(http, labelled, model_path, task="causal_lm"), 422, "incompatible_file", "training_file")


def test_list_pages_newest_first_with_a_metadata_filter(http, chat_file, model_path):  # type: ignore[no-untyped-def]
    ids = [create(http, chat_file, model_path, metadata={"n": str(i)}).json()["id"] for i in range(3)]
    bare = create(http, chat_file, model_path).json()["id"]
    page = http.get(FT, params={"limit": 2}).json()
    assert [j["id"] for j in page["data"]] == [bare, ids[2]] and page["has_more"]
    rest = http.get(FT, params={"limit": 10, "after": page["data"][-1]["id"]}).json()
    assert [j["id"] for j in rest["data"]] == [ids[1], ids[0]] and not rest["has_more"]
    only = http.get(FT, params={"metadata[n]": "1"}).json()
    assert [j["id"] for j in only["data"]] == [ids[1]]
    assert [j["id"] for j in http.get(FT, params={"metadata": "null"}).json()["data"]] == [bare]
    assert_error(http.get(FT, params={"after": "nope"}), 422, "validation_error", "after")


def test_events_newest_first_with_cursor(http, chat_file, model_path):  # type: ignore[no-untyped-def]
    job = create(http, chat_file, model_path).json()
    http.post(f"{FT}/{job['id']}/cancel")
    events = http.get(f"{FT}/{job['id']}/events").json()["data"]
    assert [e["data"].get("status") for e in events] == ["cancelled", "validating_files"]
    assert all(e["object"] == "fine_tuning.job.event" and isinstance(e["created_at"], int) for e in events)
    assert all(e["type"] in ("message", "metrics") and e["level"] in ("info", "warn", "error") for e in events)
    older = http.get(f"{FT}/{job['id']}/events", params={"after": events[0]["id"], "limit": 1}).json()
    assert [e["id"] for e in older["data"]] == [events[1]["id"]] and not older["has_more"]
    assert_error(http.get(f"{FT}/{job['id']}/events", params={"after": "ftevent-x"}), 422, "validation_error", "after")
    assert http.get(f"{FT}/{job['id']}/checkpoints").json()["data"] == []  # not succeeded: no checkpoints
    assert http.get(f"{FT}/{job['id']}").json()["status"] == "cancelled"
    assert_error(http.post(f"{FT}/{job['id']}/cancel"), 409, "job_not_cancellable")


def test_file_content_and_delete_give_the_quota_back(http, redis, chat_file, model_path):  # type: ignore[no-untyped-def]
    store = Store(redis)
    before = store.usage("default")
    content = http.get(f"/v1/files/{chat_file}/content")
    assert content.status_code == 200 and content.content == jsonl(ROWS["messages"] * 4)
    job = create(http, chat_file, model_path).json()
    assert_error(http.delete(f"/v1/files/{chat_file}"), 409, "resource_in_use", "file_id")  # an active job uses it
    http.post(f"{FT}/{job['id']}/cancel")
    deleted = http.delete(f"/v1/files/{chat_file}")
    assert deleted.status_code == 200 and deleted.json() == {"id": chat_file, "object": "file", "deleted": True}
    after = store.usage("default")
    assert (after.files, after.stored_bytes) == (before.files - 1, before.stored_bytes - len(content.content))
    assert_error(http.get(f"/v1/files/{chat_file}/content"), 404, "file_not_found")
    assert_error(http.delete(f"/v1/files/{chat_file}"), 404, "file_not_found")
    assert_error(create(http, chat_file, model_path), 404, "file_not_found", "training_file")


def test_models_retrieve_and_delete_refusals(http, tiny_causal_lm):  # type: ignore[no-untyped-def]
    listed = http.get("/v1/models").json()["data"]
    assert "tiny-causal-lm" in [m["id"] for m in listed]
    assert http.get("/v1/models/tiny-causal-lm").json()["owned_by"] == "ftjobs"
    assert_error(http.get("/v1/models/no-such-model"), 404, "model_not_found", "model")
    assert_error(http.delete("/v1/models/tiny-causal-lm"), 409, "model_not_deletable", "model")
    assert_error(http.delete("/v1/models/ft:tiny-causal-lm::ftjob-00000000000000000000"), 404, "model_not_found")


def test_estimated_finish_is_the_jobs_end_not_a_baseline_evaluations(http, chat_file, model_path):  # type: ignore[no-untyped-def]
    """Progress as the worker writes it (client/models/jobs.py Progress): training's ETA, or the final evaluation's;
    the evaluation before training has only its own phase's ETA, which is not when the job ends."""
    from ftjobs.client.models import Job, JobStatus, Progress
    from ftjobs.service.openai_jobs import to_openai_job

    job = Job.model_validate(http.get(f"/v1/jobs/{create(http, chat_file, model_path).json()['id']}").json())

    def shown(**progress: Any) -> int | None:
        running = job.model_copy(update={"status": JobStatus.running, "progress": Progress(**progress)})
        return to_openai_job(running, []).estimated_finish

    now = time.time()
    assert shown(phase="evaluating", step=0, eta_seconds=4.0) is None  # the baseline: total_steps not known yet
    assert shown(phase="evaluating", step=3, total_steps=10, eta_seconds=4.0) is None  # an epoch's evaluation
    assert abs(shown(phase="training", step=3, total_steps=10, eta_seconds=600.0) - (now + 600)) <= 2  # type: ignore[operator]
    assert abs(shown(phase="evaluating", step=10, total_steps=10, eta_seconds=30.0) - (now + 30)) <= 2  # type: ignore[operator]
    assert shown(phase="saving", step=10, total_steps=10) is None
