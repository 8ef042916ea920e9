"""Drive the worker as the API does: a job record in Redis, a file in the store, an RQ job queued."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import redis as redis_lib
from rq import Queue
from rq.serializers import JSONSerializer

from ftjobs.client import keys
from ftjobs.client.models import JobCreate, resolve_hyperparameters
from ftjobs.core.keys import JobField

TENANT = "default"
VALIDATE_QUEUE = "ftjobs-validate"  # the default of FTJOBS_VALIDATE_QUEUE


def store_root(env: dict[str, str]) -> Path:
    """The local artifact store of a test (FTJOBS_STORAGE_URL unset -> <data_dir>/store)."""
    return Path(env["FTJOBS_DATA_DIR"]).resolve() / "store"


def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(10)}"


def upload_rows(env: dict[str, str], rows: Iterable[dict[str, Any]], tenant: str = TENANT) -> str:
    """Write rows as a JSONL file where the API would store an upload; returns the file id."""
    file_id = new_id("file")
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
    """The job hash exactly as the API leaves it after validation (queued, attempt 1); returns the job id."""
    job_id = new_id("ftjob")
    record: dict[str, Any] = {
        JobField.id: job_id,
        JobField.tenant: tenant,
        JobField.status: status,
        JobField.created_at: int(time.time()),
        JobField.started_at: None,
        JobField.finished_at: None,
        JobField.request: request.model_dump(mode="json"),
        JobField.resolved: {**resolve_hyperparameters(request), "model": request.model},
        JobField.progress: {},
        JobField.last_metrics: {},
        JobField.results: {},
        JobField.attempt: attempt,
        JobField.cancel_requested: False,
        JobField.error: None,
        JobField.artifacts: [],
        JobField.heartbeat_at: None,
        JobField.worker: None,
        **extra,
    }
    redis.hset(keys.job_key(tenant, job_id), mapping={str(k): json.dumps(v) for k, v in record.items()})
    redis.zadd(keys.tenant_jobs_key(tenant), {job_id: 0})
    return job_id


def enqueue(redis: redis_lib.Redis, queue: str, job_id: str, tenant: str = TENANT, attempt: int = 1) -> None:
    Queue(queue, connection=redis, serializer=JSONSerializer).enqueue_call(
        "ftjobs.jobs.train.run",
        kwargs={"payload": {"job_id": job_id, "tenant": tenant, "attempt": attempt}},
        job_id=f"{job_id}-{attempt}",
        timeout=600,
    )


def enqueue_validation(redis: redis_lib.Redis, env: dict[str, str], job_id: str, tenant: str = TENANT) -> None:
    """As the API does on create: the job's validation (attempt 0) on the validation queue."""
    Queue(VALIDATE_QUEUE, connection=redis, serializer=JSONSerializer).enqueue_call(
        "ftjobs.jobs.validate.run",
        kwargs={"payload": {"job_id": job_id, "tenant": tenant, "attempt": 0, "queue": env["FTJOBS_QUEUE"]}},
        job_id=f"{job_id}-0",
        timeout=600,
    )


def submit(
    redis: redis_lib.Redis, env: dict[str, str], request: JobCreate, tenant: str = TENANT, validate: bool = False
) -> str:
    """A queued job (attempt 1) on the training queue; with `validate`, a new job whose validation runs first."""
    if validate:
        job_id = create_job(redis, request, tenant, status="validating_files", attempt=0)
        enqueue_validation(redis, env, job_id, tenant)
        return job_id
    job_id = create_job(redis, request, tenant)
    enqueue(redis, env["FTJOBS_QUEUE"], job_id, tenant)
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
    pairs = [x for k, v in fields.items() for x in (str(k), json.dumps(v))]
    ok, _ = redis.register_script(keys.GUARDED_WRITE)(
        keys=[keys.job_key(tenant, job_id), keys.events_key(tenant, job_id)],
        args=["" if attempt is None else str(attempt), ",".join(statuses), len(fields), *pairs, ""],
    )
    return bool(ok)


def read_job(redis: redis_lib.Redis, job_id: str, tenant: str = TENANT) -> dict[str, Any]:
    raw = redis.hgetall(keys.job_key(tenant, job_id))
    return {k.decode(): json.loads(v) for k, v in raw.items()}


def stream(redis: redis_lib.Redis, key: str) -> list[dict[str, Any]]:
    return [json.loads(fields[keys.STREAM_FIELD.encode()]) for _id, fields in redis.xrange(key)]


def events(redis: redis_lib.Redis, job_id: str, tenant: str = TENANT) -> list[dict[str, Any]]:
    return stream(redis, keys.events_key(tenant, job_id))


def metric_points(redis: redis_lib.Redis, job_id: str, tenant: str = TENANT) -> list[dict[str, Any]]:
    return stream(redis, keys.metrics_key(tenant, job_id))


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
