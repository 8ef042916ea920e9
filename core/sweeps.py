"""Sweeps in Redis: key names, the sweep hash, its trials' jobs created atomically with their place in the sweep,
and the per-sweep lock of the driver.

Writers: the API creates a sweep and marks it cancelled (`service/sweeps.py`); the sweep driver
(`jobs/sweep_driver.py`, a thread in every worker, one at a time per sweep under `sweep_lock_key`) writes its
trials, best trial, status and message. Optuna keeps its study (every trial's params, intermediate values and
state) in the same Redis through its JournalStorage, under `optuna_prefix`.

Sweep hash at `sweep_key(tenant, id)`; every value JSON: id, tenant, status, created_at, finished_at, request
(the SweepCreate), direction, trials (a list of SweepTrial documents as the driver last wrote them), best,
cancel_requested, message.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Mapping
from typing import Any, cast

from redis import Redis
from redis.exceptions import WatchError

from ftjobs.client.models import JobCreate, JobStatus
from ftjobs.client.models.sweeps import SweepCreate, SweepStatus
from ftjobs.core import keys
from ftjobs.core.job_writes import add_new_job
from ftjobs.core.records import as_text, decode_hash, encode, new_record

PREFIX = keys.PREFIX
ACTIVE_SWEEPS_KEY = f"{PREFIX}:sweeps:active"  # set of `tenant|sweep_id`: the sweeps a driver still advances
ACTIVE_JOB_STATUSES = tuple(s for s in JobStatus if not s.is_terminal)  # what max_active_jobs counts
METADATA_SWEEP = "sweep_id"  # a trial job's metadata: its sweep and trial number (checked against the sweep)
METADATA_TRIAL = "sweep_trial"


def sweep_key(tenant: str, sweep_id: str) -> str:
    return f"{PREFIX}:t:{tenant}:sweep:{sweep_id}"


def tenant_sweeps_key(tenant: str) -> str:
    """Sorted set (all scores 0, members = sweep ids) ordered lexically = by creation time."""
    return f"{PREFIX}:t:{tenant}:sweeps"


def sweep_lock_key(tenant: str, sweep_id: str) -> str:
    return f"{PREFIX}:t:{tenant}:sweep:{sweep_id}:lock"


def optuna_prefix(tenant: str, sweep_id: str) -> str:
    """Where optuna's JournalRedisBackend keeps the sweep's study (its log and snapshot keys start with this)."""
    return f"{PREFIX}:t:{tenant}:sweep:{sweep_id}:optuna"


def active_member(tenant: str, sweep_id: str) -> str:
    return f"{tenant}|{sweep_id}"


def parse_active_member(member: bytes | str) -> tuple[str, str]:
    tenant, sweep_id = as_text(member).split("|", 1)
    return tenant, sweep_id


# ----------------------------------------------------------------------------- the sweep hash


def new_sweep_record(tenant: str, sweep_id: str, req: SweepCreate) -> dict[str, Any]:
    return {
        "id": sweep_id,
        "tenant": tenant,
        "status": SweepStatus.running.value,
        "created_at": int(time.time()),
        "finished_at": None,
        "request": req.model_dump(mode="json"),
        "direction": req.resolved_direction.value,
        "trials": [],
        "best": None,
        "cancel_requested": False,
        "message": None,
    }


def create_sweep(redis: Redis, record: Mapping[str, Any]) -> None:
    """Write a new sweep, index it and hand it to the drivers, in one transaction."""
    tenant, sweep_id = record["tenant"], record["id"]
    pipe = redis.pipeline(transaction=True)
    pipe.hset(sweep_key(tenant, sweep_id), mapping={k: encode(v) for k, v in record.items()})
    pipe.zadd(tenant_sweeps_key(tenant), {sweep_id: 0})
    pipe.sadd(ACTIVE_SWEEPS_KEY, active_member(tenant, sweep_id))
    pipe.execute()


def read_sweep(redis: Redis, tenant: str, sweep_id: str) -> dict[str, Any] | None:
    raw = redis.hgetall(sweep_key(tenant, sweep_id))
    return decode_hash(cast(Mapping[Any, Any], raw)) if raw else None


def write_sweep(redis: Redis, tenant: str, sweep_id: str, fields: Mapping[str, Any], *, unless_ended: bool) -> bool:
    """The driver's write of `fields`; with `unless_ended`, only while the sweep is still running (a cancel beside
    it wins). Returns whether it was written."""
    key = sweep_key(tenant, sweep_id)
    with redis.pipeline(transaction=True) as pipe:
        while True:
            try:
                pipe.watch(key)
                status = pipe.hget(key, "status")
                if status is None or (unless_ended and json.loads(status) != SweepStatus.running):
                    return False
                pipe.multi()
                pipe.hset(key, mapping={k: encode(v) for k, v in fields.items()})
                pipe.execute()
                return True
            except WatchError:
                continue


def request_cancel(redis: Redis, tenant: str, sweep_id: str) -> bool:
    """running -> cancelled (no trial starts after this); False when the sweep had ended already."""
    key = sweep_key(tenant, sweep_id)
    with redis.pipeline(transaction=True) as pipe:
        while True:
            try:
                pipe.watch(key)
                status = pipe.hget(key, "status")
                if status is None or json.loads(status) != SweepStatus.running:
                    return False
                pipe.multi()
                fields = {
                    "status": SweepStatus.cancelled.value,
                    "cancel_requested": True,
                    "finished_at": int(time.time()),
                    "message": "cancelled",
                }
                pipe.hset(key, mapping={k: encode(v) for k, v in fields.items()})
                pipe.execute()
                return True
            except WatchError:
                continue


# ----------------------------------------------------------------------------- trials


def add_trial(
    redis: Redis,
    tenant: str,
    sweep_id: str,
    trial: dict[str, Any],
    request: JobCreate,
    queue: str,
    max_active: int | None,
) -> str:
    """Create the trial's job (as `POST /v1/jobs` does: validating_files, indexed, its first event) and append the
    trial to the sweep, in one transaction; only while the sweep runs and the tenant is under `max_active` jobs.
    Returns "created", "ended" (the sweep was cancelled meanwhile) or "quota"."""
    job_id = trial["job_id"]
    record = new_record(tenant, job_id, request, queue)
    skey = sweep_key(tenant, sweep_id)
    active_keys = [keys.status_index_key(tenant, s) for s in ACTIVE_JOB_STATUSES]
    with redis.pipeline(transaction=True) as pipe:
        while True:
            try:
                pipe.watch(skey, *(active_keys if max_active is not None else ()))
                status, trials = pipe.hmget(skey, ["status", "trials"])
                if status is None or json.loads(status) != SweepStatus.running:
                    return "ended"
                if max_active is not None and sum(cast(int, pipe.zcard(k)) for k in active_keys) >= max_active:
                    return "quota"
                pipe.multi()
                add_new_job(pipe, tenant, job_id, record, f"Job created by sweep {sweep_id}.")  # as the API's
                pipe.hset(skey, "trials", encode([*json.loads(trials or "[]"), trial]))
                pipe.execute()
                return "created"
            except WatchError:
                continue


def active_jobs(redis: Redis, tenant: str) -> int:
    """The tenant's jobs not yet finished (what max_active_jobs counts), from the status index."""
    pipe = redis.pipeline(transaction=False)
    for status in ACTIVE_JOB_STATUSES:
        pipe.zcard(keys.status_index_key(tenant, status))
    return sum(pipe.execute())


def trial_of_job(redis: Redis, tenant: str, job_id: str, request: Mapping[str, Any]) -> tuple[str, int] | None:
    """(sweep id, trial number) of a job created by a sweep, from its request's metadata, checked against the sweep
    (a job that merely claims to be a trial is none); None for any other job."""
    metadata = request.get("metadata") or {}
    sweep_id, number = metadata.get(METADATA_SWEEP), metadata.get(METADATA_TRIAL)
    if not sweep_id or number is None or not str(number).isdigit():
        return None
    raw = redis.hget(sweep_key(tenant, sweep_id), "trials")
    for trial in json.loads(raw or "[]"):
        if trial["number"] == int(number) and trial["job_id"] == job_id:
            return sweep_id, int(number)
    return None


# ----------------------------------------------------------------------------- the driver's lock


def acquire_lock(redis: Redis, tenant: str, sweep_id: str, ttl_s: float) -> str | None:
    """A token when this process may advance the sweep for `ttl_s` seconds; None when another holds it."""
    token = secrets.token_hex(8)
    ok = redis.set(sweep_lock_key(tenant, sweep_id), token, nx=True, px=max(1, int(ttl_s * 1000)))
    return token if ok else None


RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def release_lock(redis: Redis, tenant: str, sweep_id: str, token: str) -> None:
    redis.eval(RELEASE, 1, sweep_lock_key(tenant, sweep_id), token)


# ----------------------------------------------------------------------------- a trial's request


def trial_request(base: JobCreate, params: Mapping[str, Any], sweep_id: str, number: int) -> JobCreate:
    """The base request with one point of the search space applied (`hyperparameters.x`, `method.y`) and the
    trial's place in its sweep in `metadata`; pydantic's ValidationError when the point makes no valid job."""
    body = base.model_dump(mode="json", exclude_unset=False)
    for name, value in params.items():
        group, field = name.split(".", 1)
        body.setdefault(group, {})[field] = value
    body["metadata"] = {**body.get("metadata", {}), METADATA_SWEEP: sweep_id, METADATA_TRIAL: str(number)}
    return JobCreate.model_validate(body)
