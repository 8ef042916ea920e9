"""Pause and resume: a running job checkpoints at a step end and frees its worker; a resume continues from there.

The real app in process (the `http` TestClient and the real `Client` over it), real worker processes, a real Redis,
the tiny causal LM. What is asserted is where each job ends, what its worker and its tenant's slot hold meanwhile,
and that the metric stream of a paused-and-resumed run is one run's: every step once, none missing.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from ftjobs.client.cli import main as cli
from ftjobs.client.errors import Conflict
from ftjobs.client.models import JobStatus
from ftjobs.core import keys
from ftjobs.core.admission import slots_key
from ftjobs.core.queue import rq_job_id
from tests.conftest import WorkerProcess
from tests.jobs.helpers import (
    TENANT,
    events,
    eventually,
    job_queue,
    metric_points,
    read_job,
    store_root,
    submit,
    wait_for,
)
from tests.jobs.test_reliability import ROWS, assert_one_point_per_step, request

pytestmark = pytest.mark.timeout(900)
# Long enough that a pause asked for at step 5 lands well before the end on a fast machine (a step of the tiny model
# takes milliseconds); the Trainer then logs the loss every STEPS // 50 steps (jobs/training/schedule.py).
STEPS, LOGGING = 200, 4


def create(http: Any, model: Path, steps: int, batch_size: int = 1) -> str:
    """A job through the API (upload, create): validating_files, then queued by a worker's validation."""
    body = "".join(json.dumps(r) + "\n" for r in ROWS).encode()
    file_id = http.post("/v1/files", files={"file": ("rows.jsonl", body, "application/jsonl")}).json()["id"]
    hp = {"n_epochs": 1, "batch_size": batch_size, "max_seq_length": 32, "max_steps": steps}
    job = http.post(
        "/v1/jobs",
        json={"model": str(model), "training_file": file_id, "method": {"type": "lora", "r": 4, "alpha": 8},
              "hyperparameters": hp},
    )  # fmt: skip
    assert job.status_code == 201, job.text
    return str(job.json()["id"])


def indexed_under(redis: Any, job_id: str) -> set[str]:
    """The statuses whose index holds the job (exactly its own, when the index is right)."""
    return {s.value for s in JobStatus if redis.zscore(keys.status_index_key(TENANT, s), job_id) is not None}


def leased(redis: Any, job_id: str) -> list[str]:
    return [m.decode() for m in redis.zrange(keys.HEARTBEATS_KEY, 0, -1) if f"|{job_id}|" in m.decode()]


def assert_conflict(response: Any, code: str) -> None:
    assert response.status_code == 409, response.text
    error = response.json()["error"]
    assert error["code"] == code and set(error) - {"request_id"} == {"code", "message", "param", "type"}, error


def pause_when_running(
    http: Any, redis: Any, job_id: str, worker: WorkerProcess, step: int
) -> tuple[dict[str, Any], int, float]:
    """Ask for a pause once the job trained `step` steps; -> the paused record, the step when asked, seconds taken."""
    trained = lambda r: r["progress"].get("step", 0) >= step  # noqa: E731
    wait_for(redis, job_id, ["running"], worker=worker, timeout=300, until=trained)
    at_step = read_job(redis, job_id)["progress"]["step"]
    started = time.monotonic()
    asked = http.post(f"/v1/jobs/{job_id}/pause")
    assert asked.status_code == 200, asked.text
    body = asked.json()
    # Running until its next step end (or already paused, on a fast machine); then paused.
    assert (body["status"], body["pause_requested"]) in {("running", True), ("paused", False)}, body
    paused = wait_for(redis, job_id, ["paused"], worker=worker, timeout=120)
    return paused, at_step, time.monotonic() - started


def test_a_paused_job_frees_its_worker_and_resumes_from_its_checkpoint(
    http, client, redis, env, tiny_causal_lm: Path, tmp_path: Path
) -> None:
    # Checkpoints on but none due by steps or time: the one the job resumes from is the pause's. One attempt allowed:
    # a pause must not spend it. A fast reconciler: it must leave the paused job alone.
    settings = {**env, "FTJOBS_CHECKPOINT_STEPS": "1000", "FTJOBS_MAX_ATTEMPTS": "1", "FTJOBS_STALE_AFTER_S": "2"}
    worker = WorkerProcess(settings, tmp_path / "worker.log")
    try:
        job_id = create(http, tiny_causal_lm, steps=STEPS)
        paused, asked_at, took = pause_when_running(http, redis, job_id, worker, step=5)
        note = next(e for e in events(redis, job_id) if e["type"] == "status" and e["data"]["status"] == "paused")
        step = note["data"]["step"]
        assert note["data"]["checkpoint_step"] == step and asked_at <= step < STEPS, note
        assert (paused["attempt"], paused["pause_requested"]) == (1, False), paused
        pointer = json.loads((store_root(env) / keys.checkpoint_pointer_path(TENANT, job_id)).read_text())
        assert (pointer["step"], pointer["attempt"]) == (step, 1)
        # No lease, no running slot, no RQ job: the worker is free; the index and the list say paused.
        assert eventually(lambda: not leased(redis, job_id) and not redis.zcard(slots_key(TENANT)), timeout=30)
        assert indexed_under(redis, job_id) == {"paused"}
        assert [j.id for j in client.jobs.list(status=JobStatus.paused).data] == [job_id]
        assert client.jobs.pause(job_id).status == JobStatus.paused  # idempotent

        # Another job runs on the freed worker while the first one waits (past several reconciler sweeps).
        other = create(http, tiny_causal_lm, steps=4)
        assert wait_for(redis, other, worker=worker, timeout=300)["status"] == "succeeded"
        assert read_job(redis, job_id)["status"] == "paused" and not leased(redis, job_id)

        resumed = client.jobs.resume(job_id)
        assert (resumed.status, resumed.attempt) == (JobStatus.queued, 2), resumed
        with pytest.raises(Conflict) as again:
            client.jobs.resume(job_id)  # no longer paused
        assert again.value.code == "job_not_paused"
        job = wait_for(redis, job_id, worker=worker, timeout=300)
    finally:
        worker.stop()
    assert job["status"] == "succeeded" and job["attempt"] == 2 and job["progress"]["step"] == STEPS, job
    assert job["resolved"]["free_attempts"] == 1  # the pause spent no attempt (the limit here is 1)
    assert job["results"]["resumed_from_step"] == step
    resuming = f"resuming from checkpoint at step {step} (saved by attempt 1)"
    assert any(resuming in e["message"] for e in events(redis, job_id))
    # One run's history: every logged train step once, in order, none missing around the pause (the Trainer logs
    # every LOGGING steps, and at the pause's checkpoint: its loss up to there goes into the checkpoint).
    assert_one_point_per_step(redis, job_id)
    logged = sorted({*range(LOGGING, STEPS + 1, LOGGING), step})
    assert [p["step"] for p in metric_points(redis, job_id) if p["split"] == "train"] == logged
    assert not (store_root(env) / keys.checkpoints_dir(TENANT, job_id)).exists()
    assert indexed_under(redis, job_id) == {"succeeded"}
    print(f"pause asked at step {asked_at} landed at step {step} (paused {took:.2f} s after the request)")


def test_a_queued_job_pauses_at_once_and_leaves_rq(http, client, redis, env, tiny_causal_lm: Path) -> None:
    queue = job_queue(redis, env)
    job_id = submit(redis, env, request(tiny_causal_lm, env, max_steps=2))  # queued, attempt 1, no worker
    assert queue.state(rq_job_id(job_id, 1)) == "waiting"

    assert cli(["pause", job_id], client=client) == 0  # the CLI, over the real app
    job = read_job(redis, job_id)
    assert (job["status"], job["attempt"]) == ("paused", 1)
    assert queue.state(rq_job_id(job_id, 1)) not in ("waiting", "pending")
    assert not redis.llen(f"rq:queue:{env['FTJOBS_QUEUE']}") and not redis.zcard(slots_key(TENANT))
    assert indexed_under(redis, job_id) == {"paused"}

    assert cli(["resume", job_id], client=client) == 0
    job = read_job(redis, job_id)
    assert (job["status"], job["attempt"], job["resolved"]["free_attempts"]) == ("queued", 2, 1)
    assert queue.state(rq_job_id(job_id, 2)) == "waiting" and indexed_under(redis, job_id) == {"queued"}
    assert_conflict(http.post(f"/v1/jobs/{job_id}/resume"), "job_not_paused")

    # Paused again, then cancelled: at once, and a finished job can be neither paused nor resumed.
    assert client.jobs.pause(job_id).status == JobStatus.paused
    assert queue.state(rq_job_id(job_id, 2)) not in ("waiting", "pending")
    assert client.jobs.cancel(job_id).status == JobStatus.cancelled
    assert indexed_under(redis, job_id) == {"cancelled"}
    assert_conflict(http.post(f"/v1/jobs/{job_id}/pause"), "job_not_pausable")
    assert_conflict(http.post(f"/v1/jobs/{job_id}/resume"), "job_not_paused")
    assert http.post("/v1/jobs/ftjob-nope/pause").status_code == 404


def test_a_job_paused_while_validating_validates_again_on_resume(
    http, client, redis, env, tiny_causal_lm: Path, tmp_path: Path
) -> None:
    job_id = create(http, tiny_causal_lm, steps=2)  # no worker yet: it waits in validating_files
    assert client.jobs.pause(job_id).status == JobStatus.paused
    assert job_queue(redis, env).state(rq_job_id(job_id, 0)) not in ("waiting", "pending")
    resumed = client.jobs.resume(job_id)
    assert (resumed.status, resumed.attempt) == (JobStatus.validating_files, 0)
    worker = WorkerProcess(env, tmp_path / "worker.log")
    try:
        job = wait_for(redis, job_id, worker=worker, timeout=300)
    finally:
        worker.stop()
    assert job["status"] == "succeeded" and job["resolved"]["validation_runs"] == 2, job
    paused = [e["data"]["status"] for e in events(redis, job_id) if e["type"] == "status"]
    assert paused[:3] == ["validating_files", "paused", "validating_files"], paused


def test_cancelling_a_paused_job_removes_its_checkpoint(
    http, client, redis, env, tiny_causal_lm: Path, tmp_path: Path
) -> None:
    worker = WorkerProcess({**env, "FTJOBS_CHECKPOINT_STEPS": "1000"}, tmp_path / "worker.log")
    try:
        job_id = create(http, tiny_causal_lm, steps=STEPS)
        pause_when_running(http, redis, job_id, worker, step=3)
        folder = store_root(env) / keys.checkpoints_dir(TENANT, job_id)
        assert folder.is_dir()
        cancelled = client.jobs.cancel(job_id)
        assert cancelled.status == JobStatus.cancelled
        assert not folder.exists()
        assert indexed_under(redis, job_id) == {"cancelled"}
        assert_conflict(http.post(f"/v1/jobs/{job_id}/resume"), "job_not_paused")
    finally:
        worker.stop()
