"""Failures, cancellation, the attempt guard and the reconciler: jobs that do not simply succeed."""

from __future__ import annotations

import time
from pathlib import Path

from ftjobs.client.models import Hyperparameters, JobCreate, JobError, JobStatus, LoraMethod, Progress
from ftjobs.core import keys
from ftjobs.core.keys import HEARTBEATS_KEY, artifact_path, heartbeat_member, job_dir
from ftjobs.jobs.report import Reporter
from tests.conftest import WorkerProcess
from tests.jobs.helpers import (
    create_job,
    events,
    eventually,
    guarded_write,
    read_job,
    store_root,
    submit,
    upload_rows,
    wait_for,
)

ROWS = [
    {"prompt": f"count to {n} :", "completion": " ".join(str(i) for i in range(1, n + 1))}
    for n in range(1, 9)
]


def tiny_request(model: str, env: dict[str, str], rows: list[dict] = ROWS, **hp: object) -> JobCreate:
    return JobCreate(
        model=model,
        training_file=upload_rows(env, rows),
        method=LoraMethod(r=4, alpha=8),
        hyperparameters=Hyperparameters(**{"n_epochs": 1, "batch_size": 4, "max_seq_length": 32, **hp}),
    )


def test_missing_model_fails_with_model_not_found(redis, env, worker) -> None:
    job_id = submit(redis, env, tiny_request("no/such/model", env))
    job = wait_for(redis, job_id, worker=worker, timeout=60)
    assert job["status"] == "failed"
    assert job["error"]["code"] == "model_not_found" and job["error"]["param"] == "model"
    assert job["finished_at"] and not job["artifacts"]
    last = events(redis, job_id)[-1]
    assert (
        last["type"] == "status"
        and last["level"] == "error"
        and last["data"]["error"]["code"] == "model_not_found"
    )
    # The final record is in the store too (written right after the status), and the attempt left no lease behind.
    assert eventually((store_root(env) / keys.job_record_path("default", job_id)).is_file)
    assert eventually(lambda: redis.zcard(HEARTBEATS_KEY) == 0)


def test_bad_row_fails_with_invalid_data_naming_the_line(redis, env, worker, tiny_causal_lm: Path) -> None:
    rows = [*ROWS[:2], {"prompt": "no completion here"}, *ROWS[2:]]
    job_id = submit(redis, env, tiny_request(str(tiny_causal_lm), env, rows))
    job = wait_for(redis, job_id, worker=worker, timeout=60)
    assert job["status"] == "failed", job
    assert job["error"]["code"] == "invalid_data" and job["error"]["param"] == "training_file line 3"
    assert "Traceback" not in job["error"]["message"]


def test_cancel_while_running_ends_cancelled_without_artifacts(
    redis, env, worker, tiny_causal_lm: Path
) -> None:
    job_id = submit(redis, env, tiny_request(str(tiny_causal_lm), env, batch_size=1, max_steps=100_000))
    seen = wait_for(
        redis,
        job_id,
        ["running"],
        worker=worker,
        timeout=60,
        until=lambda job: (job.get("progress") or {}).get("step", 0) >= 2,
    )
    # What the API does for a running job: flag it, guarded on the status only.
    assert guarded_write(redis, job_id, {"cancel_requested": True}, statuses=["running"])
    asked = time.monotonic()
    job = wait_for(redis, job_id, worker=worker, timeout=30)
    assert job["status"] == "cancelled", job
    assert time.monotonic() - asked < 5
    assert job["artifacts"] == [] and job["error"] is None
    # Progress is written every step, so the job stops within a few steps of what the canceller saw.
    assert seen["progress"]["step"] <= job["progress"]["step"] <= seen["progress"]["step"] + 5
    assert not (store_root(env) / artifact_path("default", job_id, "")).exists()
    assert [e["data"]["status"] for e in events(redis, job_id) if e["type"] == "status"] == [
        "running",
        "cancelled",
    ]


def test_a_stale_attempt_cannot_write(redis, tiny_causal_lm: Path, env) -> None:
    job_id = create_job(redis, tiny_request(str(tiny_causal_lm), env), status="queued", attempt=2)
    stale, current = Reporter(redis, "default", job_id, 1), Reporter(redis, "default", job_id, 2)

    assert not stale.start("w-old")
    assert current.start("w-new")
    n_events = len(events(redis, job_id))
    assert not stale.progress(Progress(step=99))
    assert not stale.event("hello from the past")
    assert not stale.metric("train", 1, 0.1, {"loss": 1.0})
    assert not stale.heartbeat()
    assert not stale.finish(JobStatus.failed, error=JobError(code="internal_error", message="x"))
    job = read_job(redis, job_id)
    assert job["status"] == "running" and job["worker"] == "w-new" and job["progress"]["step"] == 0
    assert len(events(redis, job_id)) == n_events
    assert redis.zscore(HEARTBEATS_KEY, heartbeat_member("default", job_id, 1)) is None
    assert stale.cancel_requested() and not current.cancel_requested()

    assert current.metric("eval", 0, 0.0, {"loss": 2.0, "nan": float("nan")})
    assert read_job(redis, job_id)["last_metrics"] == {"eval_loss": 2.0}
    assert current.finish(JobStatus.succeeded, results={"final": {"loss": 1.0}})
    assert not current.event("after the end")  # a finished job takes no more writes
    job = read_job(redis, job_id)
    assert job["status"] == "succeeded" and job["finished_at"] and job["results"] == {"final": {"loss": 1.0}}
    assert redis.zcard(HEARTBEATS_KEY) == 0


def test_cancelled_while_queued_is_never_started(redis, env, tiny_causal_lm: Path) -> None:
    job_id = create_job(redis, tiny_request(str(tiny_causal_lm), env), cancel_requested=True)
    assert not Reporter(redis, "default", job_id, 1).start("w")
    assert read_job(redis, job_id)["status"] == "cancelled"


def test_the_reconciler_requeues_a_lost_attempt_then_fails_after_max_attempts(
    redis, env, tiny_causal_lm: Path, tmp_path: Path
) -> None:
    worker = WorkerProcess(
        {**env, "FTJOBS_STALE_AFTER_S": "3", "FTJOBS_HEARTBEAT_S": "0.5", "FTJOBS_MAX_ATTEMPTS": "2"},
        tmp_path / "reconciler-worker.log",
    )
    try:
        # Attempt 1 "ran" on a worker that died: running, with a heartbeat a minute old.
        lost = create_job(redis, tiny_request(str(tiny_causal_lm), env), status="running", attempt=1)
        redis.zadd(HEARTBEATS_KEY, {heartbeat_member("default", lost, 1): time.time() - 60})

        # The reconciler requeues it as attempt 2, which this worker then runs to the end.
        job = wait_for(redis, lost, worker=worker, timeout=90)
        assert job["status"] == "succeeded" and job["attempt"] == 2, (job, worker.output()[-3000:])
        statuses = [
            (e["data"]["status"], e["data"]["attempt"]) for e in events(redis, lost) if e["type"] == "status"
        ]
        assert statuses == [("queued", 2), ("running", 2), ("succeeded", 2)]
        assert "worker lost" in events(redis, lost)[0]["message"]

        # At the last attempt, a lost worker fails the job.
        last = create_job(redis, tiny_request(str(tiny_causal_lm), env), status="running", attempt=2)
        redis.zadd(HEARTBEATS_KEY, {heartbeat_member("default", last, 2): time.time() - 60})
        job = wait_for(redis, last, worker=worker, timeout=30)
        assert job["status"] == "failed" and job["attempt"] == 2
        assert job["error"]["code"] == "worker_lost"
        assert redis.zcard(HEARTBEATS_KEY) == 0
        assert not (store_root(env) / job_dir("default", last)).exists()
    finally:
        worker.stop()
