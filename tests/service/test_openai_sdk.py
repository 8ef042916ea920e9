"""The official `openai` SDK, unmodified, against a live stack: uvicorn in a subprocess, a real worker, a tiny model.

Each SDK call is printed with the key fields of its result (`pytest -s` shows them)."""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai.types import FileObject as FileObjectType
from openai.types import Model as ModelType
from openai.types.fine_tuning import FineTuningJob as FineTuningJobType
from openai.types.fine_tuning import FineTuningJobEvent as FineTuningJobEventType
from openai.types.fine_tuning.jobs import FineTuningJobCheckpoint as FineTuningJobCheckpointType

from tests.service.api_process import ApiProcess, api_process

MODEL = "tiny-causal-lm"  # the tiny_causal_lm fixture's folder under the model root


def say(call: str, **fields: Any) -> None:
    print(f"SDK {call} -> " + ", ".join(f"{k}={v!r}" for k, v in fields.items()), flush=True)


def chat_rows(n: int) -> bytes:
    """Echo a colour word: easy enough for a tiny model to learn in a few steps."""
    words = ["red", "blue", "green", "black", "white", "gold", "pink", "grey"]
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"say {words[i % 8]}"},
                {"role": "assistant", "content": words[i % 8]},
            ]
        }
        for i in range(n)
    ]
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


@pytest.fixture
def api(env: dict[str, str], tmp_path: Path, tiny_causal_lm: Path) -> Iterator[ApiProcess]:
    with api_process(env, tmp_path / "api.log") as process:
        yield process


@pytest.fixture
def sdk(api: ApiProcess) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{api.url}/v1", api_key="unused-without-auth", max_retries=0) as client:
        yield client


def strictly(api: ApiProcess, path: str, sdk_type: type[Any]) -> None:
    """The JSON at `path` (an object, or a list page's items) validates as the SDK's pydantic type: the SDK itself
    parses responses leniently (a missing or mistyped field would pass unseen)."""
    body = httpx.get(f"{api.url}/v1{path}", timeout=60).json()
    for item in body["data"] if body.get("object") == "list" else [body]:
        sdk_type.model_validate(item)


def wait_status(sdk: openai.OpenAI, job_id: str, status: str, worker: Any, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while (job := sdk.fine_tuning.jobs.retrieve(job_id)).status != status:
        assert job.status in ("validating_files", "queued", "running"), (job.status, job.error, worker.output()[-3000:])
        assert time.monotonic() < deadline, f"{job_id} still {job.status}:\n{worker.output()[-3000:]}"
        time.sleep(0.5)


def test_sdk_fine_tunes_end_to_end(sdk: openai.OpenAI, worker, api: ApiProcess) -> None:  # type: ignore[no-untyped-def]
    upload = sdk.files.create(file=("colours.jsonl", chat_rows(32)), purpose="fine-tune")
    say("files.create", id=upload.id, bytes=upload.bytes, purpose=upload.purpose, status=upload.status)
    assert upload.status == "processed" and upload.purpose == "fine-tune"

    job = sdk.fine_tuning.jobs.create(
        model=MODEL,
        training_file=upload.id,
        suffix="colours",
        seed=7,
        metadata={"team": "sdk-test"},
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2, "batch_size": 8}}},
        extra_body={"peft": {"type": "lora", "r": 4, "alpha": 8}, "training": {"max_seq_length": 32}},
    )
    say("fine_tuning.jobs.create", id=job.id, status=job.status, model=job.model, hyperparameters=job.hyperparameters)
    assert job.status == "validating_files" and job.seed == 7 and job.hyperparameters.n_epochs == 2

    # list_events until the newest event says the job succeeded (events are newest first, as OpenAI lists them)
    deadline, newest = time.monotonic() + 600, None
    while time.monotonic() < deadline:
        page = sdk.fine_tuning.jobs.list_events(job.id, limit=5)
        newest = page.data[0]
        if newest.data and newest.data.get("status") in ("succeeded", "failed", "cancelled"):
            break
        time.sleep(1)
    assert newest is not None
    say("fine_tuning.jobs.list_events", newest=newest.message, level=newest.level, created_at=newest.created_at)
    assert newest.data["status"] == "succeeded", worker.output()[-3000:]
    every = list(sdk.fine_tuning.jobs.list_events(job.id, limit=3))  # auto-pagination over `after`
    created = [e.created_at for e in every]
    assert created == sorted(created, reverse=True) and len({e.id for e in every}) == len(every)
    metrics = [e for e in every if e.type == "metrics"]
    assert metrics and all(isinstance(e.created_at, int) for e in every)
    say("fine_tuning.jobs.list_events (all pages)", events=len(every), metrics_events=len(metrics))

    done = sdk.fine_tuning.jobs.retrieve(job.id)
    say(
        "fine_tuning.jobs.retrieve",
        status=done.status,
        fine_tuned_model=done.fine_tuned_model,
        result_files=done.result_files,
        trained_tokens=done.trained_tokens,
        organization_id=done.organization_id,
    )
    assert done.fine_tuned_model == f"ft:{MODEL}:colours:{job.id}"
    assert done.trained_tokens and done.trained_tokens > 0 and done.finished_at >= done.created_at
    assert len(done.result_files) == 1
    strictly(api, f"/fine_tuning/jobs/{job.id}", FineTuningJobType)
    strictly(api, f"/fine_tuning/jobs/{job.id}/events?limit=100", FineTuningJobEventType)
    strictly(api, f"/fine_tuning/jobs/{job.id}/checkpoints", FineTuningJobCheckpointType)
    strictly(api, f"/files/{done.result_files[0]}", FileObjectType)
    strictly(api, "/models", ModelType)

    checkpoints = sdk.fine_tuning.jobs.checkpoints.list(job.id).data
    for c in checkpoints:
        say("fine_tuning.jobs.checkpoints.list", step=c.step_number, checkpoint=c.fine_tuned_model_checkpoint,
            train_loss=c.metrics.train_loss, download_url=c.model_extra["download_url"])  # fmt: skip
    steps = [c.step_number for c in checkpoints]
    assert steps == [8, 4]  # the final model, then the first epoch's weights (32 rows / batch 8 = 4 steps an epoch)
    for c in checkpoints:
        assert c.metrics.train_loss is not None and c.fine_tuning_job_id == job.id
        weights = httpx.get(c.model_extra["download_url"], timeout=60)
        assert weights.status_code == 200 and len(weights.content) > 1000

    content = sdk.files.content(done.result_files[0]).text
    rows = list(csv.DictReader(io.StringIO(content)))
    say("files.content", result_file=done.result_files[0], rows=len(rows), columns=list(rows[0]), last=rows[-1])
    assert {"step", "train_loss"} <= set(rows[0]) and int(rows[-1]["step"]) == 8
    result = sdk.files.retrieve(done.result_files[0])
    assert result.purpose == "fine-tune-results" and result.bytes == len(content.encode())

    models = [m.id for m in sdk.models.list()]
    say("models.list", models=models)
    assert MODEL in models and done.fine_tuned_model in models
    model = sdk.models.retrieve(done.fine_tuned_model)
    say("models.retrieve", id=model.id, owned_by=model.owned_by, created=model.created)
    assert model.id == done.fine_tuned_model and model.object == "model"

    # pause a running job (it checkpoints, then releases the worker), resume it, then cancel it
    long = sdk.fine_tuning.jobs.create(
        model=MODEL,
        training_file=upload.id,
        hyperparameters={"n_epochs": 100, "batch_size": 1},
        extra_body={"training": {"max_seq_length": 32}},
    )
    wait_status(sdk, long.id, "running", worker)
    pausing = sdk.fine_tuning.jobs.pause(long.id)
    say("fine_tuning.jobs.pause", id=long.id, status=pausing.status)
    wait_status(sdk, long.id, "paused", worker, timeout=120)
    paused_at = sdk.fine_tuning.jobs.retrieve(long.id)
    resumed = sdk.fine_tuning.jobs.resume(long.id)
    say("fine_tuning.jobs.resume", id=long.id, status=resumed.status)
    wait_status(sdk, long.id, "running", worker)
    resume_events = [e.message for e in sdk.fine_tuning.jobs.list_events(long.id, limit=100) if "resum" in e.message]
    say("fine_tuning.jobs.list_events (after resume)", paused=paused_at.status, resume_events=resume_events)
    assert paused_at.status == "paused" and resume_events
    cancelled = sdk.fine_tuning.jobs.cancel(long.id)
    say("fine_tuning.jobs.cancel", id=long.id, status=cancelled.status)
    wait_status(sdk, long.id, "cancelled", worker, timeout=120)

    # auto-pagination of jobs.list, newest first, and a metadata filter
    listed = [j.id for j in sdk.fine_tuning.jobs.list(limit=1)]
    say("fine_tuning.jobs.list (limit=1, auto-paginated)", ids=listed)
    assert listed == [long.id, job.id]
    tagged = [j.id for j in sdk.fine_tuning.jobs.list(metadata={"team": "sdk-test"})]
    assert tagged == [job.id]

    # continue the fine-tuned model (its id as `model`), then delete it and a file
    child = sdk.fine_tuning.jobs.create(
        model=done.fine_tuned_model,
        training_file=upload.id,
        hyperparameters={"n_epochs": 100, "batch_size": 1},
        extra_body={"training": {"max_seq_length": 32}},
    )
    say("fine_tuning.jobs.create (from ft model)", id=child.id, model=child.model)
    assert child.model == MODEL
    try:
        sdk.models.delete(done.fine_tuned_model)
        raise AssertionError("a model a running job continues from was deleted")
    except openai.ConflictError as e:
        say("models.delete (in use)", status=e.status_code, code=e.code)
    sdk.fine_tuning.jobs.cancel(child.id)
    wait_status(sdk, child.id, "cancelled", worker, timeout=120)
    deleted = sdk.models.delete(done.fine_tuned_model)
    say("models.delete", id=deleted.id, deleted=deleted.deleted)
    assert deleted.deleted and done.fine_tuned_model not in [m.id for m in sdk.models.list()]
    assert sdk.fine_tuning.jobs.checkpoints.list(job.id).data == []
    with pytest.raises(openai.NotFoundError):
        sdk.models.retrieve(done.fine_tuned_model)
    gone = sdk.files.delete(upload.id)
    say("files.delete", id=gone.id, deleted=gone.deleted)
    assert gone.deleted and upload.id not in [f.id for f in sdk.files.list()]
    with pytest.raises(openai.NotFoundError):
        sdk.files.content(upload.id)


def test_sdk_dpo_job_learns_the_preferences(sdk: openai.OpenAI, worker, api: ApiProcess) -> None:  # type: ignore[no-untyped-def]
    from tests.jobs.test_dpo import preference_rows

    def rows(n: int, seed: int) -> bytes:
        return "".join(json.dumps(r) + "\n" for r in preference_rows(n, seed)).encode()

    train = sdk.files.create(file=("prefs.jsonl", rows(96, 1)), purpose="fine-tune")
    valid = sdk.files.create(file=("prefs-valid.jsonl", rows(48, 2)), purpose="fine-tune")
    job = sdk.fine_tuning.jobs.create(
        model=MODEL,
        training_file=train.id,
        validation_file=valid.id,
        seed=0,
        method={"type": "dpo", "dpo": {"hyperparameters": {"n_epochs": 3, "batch_size": 8, "beta": 0.1}}},
        extra_body={
            "peft": {"type": "lora", "r": 8},
            "training": {"learning_rate": 5e-3, "eval_steps": 12},
            "eval_generation_limit": 0,
        },
    )
    say("fine_tuning.jobs.create (dpo)", id=job.id, method=job.method.type, beta=job.method.dpo.hyperparameters.beta)
    assert job.method.type == "dpo" and job.method.dpo.hyperparameters.beta == 0.1
    wait_status(sdk, job.id, "succeeded", worker, timeout=900)  # minutes on a loaded machine
    done = sdk.fine_tuning.jobs.retrieve(job.id)
    rows_by_step = {
        int(r["step"]): r for r in csv.DictReader(io.StringIO(sdk.files.content(done.result_files[0]).text))
    }
    before = float(rows_by_step[0]["valid_reward_accuracy"])
    after = float(rows_by_step[max(rows_by_step)]["valid_reward_accuracy"])
    say("files.content (dpo result file)", reward_accuracy_before=before, reward_accuracy_after=after,
        fine_tuned_model=done.fine_tuned_model)  # fmt: skip
    assert after > before and after > 0.5
