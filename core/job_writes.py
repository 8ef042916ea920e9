"""Writing a new job: the one set of writes that makes a job exist (its hash, the tenant's indexes, the reconciler's
active set, its first event). The API's `Store.create_job` runs them under its quota check; a job that the
platform starts by itself (a monitor's evaluation or retraining: core/monitors.py) is created with `create_job`,
under the same max_active_jobs count when it is given one."""

from __future__ import annotations

from typing import Any

from redis import Redis
from redis.exceptions import WatchError

from ftjobs.client.models import JobCreate, JobStatus
from ftjobs.core import keys
from ftjobs.core.records import encode, new_id, new_record, status_entry

ACTIVE_STATUSES = tuple(s for s in JobStatus if not s.is_terminal)  # what max_active_jobs counts


class AtQuota(Exception):
    """The tenant has `active` jobs not yet finished, `limit` (its max_active_jobs) or more: no job was created."""

    def __init__(self, active: int, limit: int) -> None:
        super().__init__(f"This tenant has {active} jobs not yet finished (max_active_jobs {limit})")
        self.active, self.limit = active, limit


def add_new_job(pipe: Any, tenant: str, job_id: str, record: dict[str, Any], message: str = "Job created.") -> None:
    """Queue on `pipe` (inside its MULTI) the writes of a new `validating_files` job."""
    pipe.hset(keys.job_key(tenant, job_id), mapping={str(k): encode(v) for k, v in record.items()})
    pipe.zadd(keys.tenant_jobs_key(tenant), {job_id: 0})
    pipe.zadd(keys.status_index_key(tenant, JobStatus.validating_files), {job_id: 0})
    pipe.sadd(keys.ACTIVE_JOBS_KEY, keys.active_member(tenant, job_id))  # the reconciler's
    entry = status_entry(JobStatus.validating_files, message)
    pipe.xadd(keys.events_key(tenant, job_id), {keys.STREAM_FIELD: entry}, maxlen=keys.STREAM_MAXLEN, approximate=True)


def create_job(
    redis: Redis, tenant: str, req: JobCreate, queue: str | None, message: str, max_active: int | None = None
) -> str:
    """A new job (validating_files) for `req`, already checked by whoever asks for it; returns its id. The caller
    enqueues its validation (`JobQueue.enqueue_validation`). With `max_active`, only while the tenant has fewer
    jobs not yet finished (AtQuota otherwise; the count and the writes are one transaction, as the API's)."""
    job_id = new_id("ftjob-")
    record = new_record(tenant, job_id, req, queue)
    active_keys = [keys.status_index_key(tenant, s) for s in ACTIVE_STATUSES] if max_active is not None else []
    with redis.pipeline(transaction=True) as pipe:
        while True:
            try:
                if max_active is not None:
                    pipe.watch(*active_keys)  # a transition beside us retries the count
                    active = sum(int(pipe.zcard(k)) for k in active_keys)  # type: ignore[arg-type]
                    if active >= max_active:
                        raise AtQuota(active, max_active)
                pipe.multi()
                add_new_job(pipe, tenant, job_id, record, message)
                pipe.execute()
                return job_id
            except WatchError:
                continue
