"""The validating_files phase on a worker (jobs/validate.py): tokenizer-aware checks before a job is queued."""

from __future__ import annotations

import json
import time
from pathlib import Path

from rq import Queue
from rq.serializers import JSONSerializer

from ftjobs.client.display import describe_profile
from ftjobs.client.models import JobCreate, JobStatus
from ftjobs.core.keys import HEARTBEATS_KEY, heartbeat_member
from ftjobs.core.settings import Settings
from ftjobs.jobs.reconcile import Reconciler
from tests.conftest import QUEUE
from tests.jobs.helpers import VALIDATE_QUEUE, create_job, events, guarded_write, read_job, upload_rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def long_rows(n: int) -> list[dict]:
    """Plain text rows; every fourth is long enough to be truncated at 32 tokens."""
    return [{"text": " ".join(f"w{(i * 7 + k) % 50}" for k in range(60 if i % 4 == 0 else 4))} for i in range(n)]


def test_a_new_job_is_checked_with_the_tokenizer_before_it_is_queued(  # type: ignore[no-untyped-def]
    client, worker, tiny_causal_lm: Path, tmp_path: Path
) -> None:
    train = client.files.upload(write_jsonl(tmp_path / "train.jsonl", long_rows(24)))
    job = client.jobs.create(
        model=str(tiny_causal_lm),
        training_file=train.id,
        hyperparameters={"max_steps": 2, "batch_size": 4, "max_seq_length": 32, "validation_split": 0.25},
    )
    assert job.status == JobStatus.validating_files and job.attempt == 0
    job = client.jobs.wait(job.id, timeout=180)
    assert job.status == JobStatus.succeeded, (job.error, worker.output()[-3000:])

    all_events = client.jobs.events(job.id, limit=1000).data
    statuses = [e.data["status"] for e in all_events if e.type == "status"]
    assert statuses == ["validating_files", "queued", "running", "succeeded"]
    messages = [e.message for e in all_events]
    queued_at = next(i for i, e in enumerate(all_events) if e.type == "status" and e.data["status"] == "queued")
    warnings = [i for i, e in enumerate(all_events) if e.level == "warning" and "truncated" in e.message]
    assert len(warnings) == 1 and warnings[0] < queued_at, messages  # reported once, while validating
    tokens = all_events[warnings[0]].data
    n_train = job.resolved_hyperparameters["n_train"]
    assert tokens["examples"] == n_train and 0 < tokens["truncated"] < n_train
    assert tokens["max"] == 32 and tokens["max_seq_length"] == 32

    # The training file's profile now has the token lengths this job saw.
    profile = client.files.profile(train.id)
    assert [t.job_id for t in profile.tokens] == [job.id]
    assert profile.tokens[0].truncated == tokens["truncated"] and profile.tokens[0].model == tiny_causal_lm.name
    shown = describe_profile(profile)  # what `ftjobs profile FILE` prints
    assert "  tokens" in shown and job.id in shown


def test_a_job_that_cannot_train_fails_while_validating(  # type: ignore[no-untyped-def]
    client, worker, redis, tiny_causal_lm: Path, tmp_path: Path
) -> None:
    train = client.files.upload(write_jsonl(tmp_path / "one.jsonl", long_rows(1)))
    job = client.jobs.create(model=str(tiny_causal_lm), training_file=train.id)
    job = client.jobs.wait(job.id, timeout=120)
    assert job.status == JobStatus.failed and job.error is not None, worker.output()[-3000:]
    assert job.error.code == "invalid_data" and job.error.param == "training_file"
    assert "at least 2" in job.error.message
    assert job.attempt == 0 and job.started_at is None  # never queued for training, never ran
    statuses = [e.data["status"] for e in client.jobs.events(job.id).data if e.type == "status"]
    assert statuses == ["validating_files", "failed"]
    assert Queue(QUEUE, connection=redis, serializer=JSONSerializer).count == 0
    assert redis.zcard(HEARTBEATS_KEY) == 0


def test_a_job_cancelled_while_validating_is_never_queued(redis, env, tiny_causal_lm: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from ftjobs.jobs import validate

    for name, value in env.items():
        monkeypatch.setenv(name, value)
    request = JobCreate(model=str(tiny_causal_lm), training_file=upload_rows(env, long_rows(8)))
    job_id = create_job(redis, request, status="validating_files", attempt=0)
    assert guarded_write(redis, job_id, {"status": "cancelled", "cancel_requested": True}, ["validating_files"])
    payload = {"job_id": job_id, "tenant": "default", "attempt": 0, "queue": QUEUE}
    assert validate.run(payload)["status"] == "skipped"
    assert read_job(redis, job_id)["status"] == "cancelled"
    assert Queue(QUEUE, connection=redis, serializer=JSONSerializer).count == 0

    # The same job, not cancelled, is validated in this process and handed to the training queue.
    job_id = create_job(redis, request, status="validating_files", attempt=0)
    payload["job_id"] = job_id
    assert validate.run(payload)["status"] == "queued"
    record = read_job(redis, job_id)
    assert (record["status"], record["attempt"]) == ("queued", 1)
    assert Queue(QUEUE, connection=redis, serializer=JSONSerializer).job_ids == [f"{job_id}-1"]
    assert redis.zcard(HEARTBEATS_KEY) == 0


def test_the_reconciler_validates_again_after_a_lost_validation_then_gives_up(  # type: ignore[no-untyped-def]
    redis, env, tiny_causal_lm: Path
) -> None:
    settings = Settings.from_env({**env, "FTJOBS_MAX_ATTEMPTS": "2", "FTJOBS_STALE_AFTER_S": "5"})
    reconciler = Reconciler(redis, settings)
    request = JobCreate(model=str(tiny_causal_lm), training_file=upload_rows(env, long_rows(8)))
    job_id = create_job(redis, request, status="validating_files", attempt=0)
    member = heartbeat_member("default", job_id, 0)

    redis.zadd(HEARTBEATS_KEY, {member: time.time() - 60})  # its validating worker died
    assert reconciler.sweep_leases(time.time()) == 1
    record = read_job(redis, job_id)
    assert record["status"] == "validating_files" and record["resolved"]["validation_attempts"] == 2
    validations = Queue(VALIDATE_QUEUE, connection=redis, serializer=JSONSerializer).jobs
    assert [j.func_name for j in validations] == ["ftjobs.jobs.validate.run"]
    assert validations[0].kwargs["payload"] == {"job_id": job_id, "tenant": "default", "attempt": 0, "queue": QUEUE}
    assert "validating again" in events(redis, job_id)[-1]["message"]

    redis.zadd(HEARTBEATS_KEY, {member: time.time() - 60})  # and the second one too
    reconciler.sweep_leases(time.time())
    record = read_job(redis, job_id)
    assert record["status"] == "failed" and record["error"]["code"] == "worker_lost"
    assert redis.zcard(HEARTBEATS_KEY) == 0
