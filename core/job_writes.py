"""Writing a new job: the one set of writes that makes a job exist (its hash, the tenant's indexes, the reconciler's
active set, its first event). The API's `Store.create_job` runs them under its quota check; a job that the
platform starts by itself (a monitor's evaluation or retraining: core/monitors.py) is created with `create_job`."""

from __future__ import annotations

from typing import Any

from redis import Redis

from ftjobs.client.models import JobCreate, JobStatus
from ftjobs.core import keys
from ftjobs.core.records import encode, new_id, new_record, status_entry


def add_new_job(pipe: Any, tenant: str, job_id: str, record: dict[str, Any], message: str = "Job created.") -> None:
    """Queue on `pipe` (inside its MULTI) the writes of a new `validating_files` job."""
    pipe.hset(keys.job_key(tenant, job_id), mapping={str(k): encode(v) for k, v in record.items()})
    pipe.zadd(keys.tenant_jobs_key(tenant), {job_id: 0})
    pipe.zadd(keys.status_index_key(tenant, JobStatus.validating_files), {job_id: 0})
    pipe.sadd(keys.ACTIVE_JOBS_KEY, keys.active_member(tenant, job_id))  # the reconciler's
    entry = status_entry(JobStatus.validating_files, message)
    pipe.xadd(keys.events_key(tenant, job_id), {keys.STREAM_FIELD: entry}, maxlen=keys.STREAM_MAXLEN, approximate=True)


def create_job(redis: Redis, tenant: str, req: JobCreate, queue: str | None, message: str) -> str:
    """A new job (validating_files) for `req`, already checked by whoever asks for it; returns its id. The caller
    enqueues its validation (`JobQueue.enqueue_validation`)."""
    job_id = new_id("ftjob-")
    with redis.pipeline(transaction=True) as pipe:
        add_new_job(pipe, tenant, job_id, new_record(tenant, job_id, req, queue), message)
        pipe.execute()
    return job_id
