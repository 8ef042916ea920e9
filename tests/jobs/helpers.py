"""Drive the worker as the API does: a job record in Redis, a file in the store, an RQ job queued."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import redis as redis_lib

from ftjobs.client.models import JobCreate, JobStatus
from ftjobs.core import keys
from ftjobs.core.keys import JobField
from ftjobs.core.queue import JobQueue
from ftjobs.core.records import decode_entry, decode_hash, encode, guarded_write_args, new_id, new_record
from ftjobs.core.settings import Settings

TENANT = "default"
VALIDATE_QUEUE = Settings.model_fields["validate_queue"].default  # FTJOBS_VALIDATE_QUEUE is unset in tests


def store_root(env: dict[str, str]) -> Path:
    """The local artifact store of a test (FTJOBS_STORAGE_URL unset -> <data_dir>/store)."""
    return Path(env["FTJOBS_DATA_DIR"]).resolve() / "store"


def upload_rows(env: dict[str, str], rows: Iterable[dict[str, Any]], tenant: str = TENANT) -> str:
    """Write rows as a JSONL file where the API would store an upload; returns the file id."""
    file_id = new_id("file-")
    path = store_root(env) / keys.file_path(tenant, file_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return file_id


def create_job(
    redis: redis_lib.Redis,
    request: JobCreate,
    tenant: str = TENANT,
    status: str = "queued",
    attempt: int = 1,
    **extra: Any,
) -> str:
    """The job hash as the API creates it, left as after validation (queued, attempt 1); returns the job id.

    No training queue in the record: the worker's own FTJOBS_QUEUE is the job's."""
    job_id = new_id("ftjob-")
    record = {**new_record(tenant, job_id, request, queue=None), JobField.status: status, JobField.attempt: attempt}
    record.update(extra)
    redis.hset(keys.job_key(tenant, job_id), mapping={str(k): encode(v) for k, v in record.items()})
    redis.zadd(keys.tenant_jobs_key(tenant), {job_id: 0})
    return job_id


def job_queue(redis: redis_lib.Redis, env: dict[str, str]) -> JobQueue:
    """The queues of the test's deployment, as the API and the workers use them."""
    return JobQueue(redis, Settings.from_env(env))


def submit(
    redis: redis_lib.Redis, env: dict[str, str], request: JobCreate, tenant: str = TENANT, validate: bool = False
) -> str:
    """A queued job (attempt 1) on the training queue; with `validate`, a new job whose validation runs first."""
    if validate:
        job_id = create_job(redis, request, tenant, status=JobStatus.validating_files, attempt=0)
        job_queue(redis, env).enqueue_validation(tenant, job_id)
        return job_id
    job_id = create_job(redis, request, tenant)
    job_queue(redis, env).enqueue_attempt(tenant, job_id, 1)
    return job_id


def guarded_write(
    redis: redis_lib.Redis,
    job_id: str,
    fields: dict[str, Any],
    statuses: Iterable[str] = (),
    attempt: int | None = None,
    tenant: str = TENANT,
) -> bool:
    """A write through GUARDED_WRITE, as the API does (e.g. cancel_requested on a running job)."""
    ok, _ = redis.register_script(keys.GUARDED_WRITE)(
        keys=keys.guarded_write_keys(tenant, job_id),
        args=guarded_write_args(attempt, statuses, fields),
    )
    return bool(ok)


def read_job(redis: redis_lib.Redis, job_id: str, tenant: str = TENANT) -> dict[str, Any]:
    return decode_hash(redis.hgetall(keys.job_key(tenant, job_id)))


def stream(redis: redis_lib.Redis, key: str) -> list[dict[str, Any]]:
    return [decode_entry(fields) for _id, fields in redis.xrange(key)]


def events(redis: redis_lib.Redis, job_id: str, tenant: str = TENANT) -> list[dict[str, Any]]:
    return stream(redis, keys.events_key(tenant, job_id))


def metric_points(redis: redis_lib.Redis, job_id: str, tenant: str = TENANT) -> list[dict[str, Any]]:
    return stream(redis, keys.metrics_key(tenant, job_id))


def eventually(check: Callable[[], bool], timeout: float = 60) -> bool:
    """Whether `check()` holds within `timeout` s: what a worker writes after the status (job.json, the lease)."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def wait_for(
    redis: redis_lib.Redis,
    job_id: str,
    statuses: Iterable[str] = ("succeeded", "failed", "cancelled"),
    timeout: float = 120,
    worker: Any = None,
    tenant: str = TENANT,
    until: Any = None,
) -> dict[str, Any]:
    """Poll the record until its status is one of `statuses` (and `until(record)` holds, if given)."""
    wanted = set(statuses)
    deadline = time.monotonic() + timeout
    record: dict[str, Any] = {}
    while time.monotonic() < deadline:
        record = read_job(redis, job_id, tenant)
        if record.get("status") in wanted and (until is None or until(record)):
            return record
        if worker is not None and worker.proc.poll() is not None:
            raise AssertionError(f"worker exited with {worker.proc.returncode}:\n{worker.output()[-4000:]}")
        time.sleep(0.1)
    log = worker.output()[-4000:] if worker is not None else ""
    raise AssertionError(f"job {job_id} still {record.get('status')} after {timeout} s: {record}\n{log}")
