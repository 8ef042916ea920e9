"""Monitors: a succeeded job re-evaluated on a cron schedule on the newest upload of a dataset (core/monitors.py):
create, list, get, delete, run now, and the history of runs with their metric and decision."""

from __future__ import annotations

import json
import time
from typing import Annotated, Any

from fastapi import APIRouter, Query

from ftjobs.client.models import JobCreate, Task
from ftjobs.client.models.evaluations import EvaluationCreate
from ftjobs.client.models.monitors import (
    MONITOR_ID_PATTERN,
    Monitor,
    MonitorCreate,
    MonitorDeleted,
    MonitorList,
    MonitorRun,
    MonitorRunList,
)
from ftjobs.core import keys, monitors
from ftjobs.core.job_writes import AtQuota
from ftjobs.core.records import new_id
from ftjobs.core.settings import Settings
from ftjobs.service.deps import LimitsDep, RedisDep, SettingsDep, StorageDep, StoreDep, TenantDep
from ftjobs.service.errors import (
    IncompatibleParentJob,
    JobNotFound,
    MalformedBody,
    ModelNotAllowed,
    MonitorNotFound,
    ParentJobNotSucceeded,
    QuotaExceeded,
    RateLimited,
    ValidationError,
    error_responses,
)
from ftjobs.service.job_checks import check_models, check_parent
from ftjobs.service.limits import quota_exceeded
from ftjobs.service.routes.evaluations import evaluated_job, evaluation_request
from ftjobs.service.store import Store

router = APIRouter(prefix="/v1/monitors", tags=["monitors"])
MonitorAfter = Annotated[
    str | None, Query(pattern=MONITOR_ID_PATTERN, description="Cursor: `last_id` of the previous page.")
]
RunAfter = Annotated[str | None, Query(pattern=r"^run-[0-9a-f]{20}$", description="Cursor: `last_id`.")]
PageSize = Annotated[int, Query(ge=1, le=100, description="Page size.")]


def checked(request: JobCreate, store: Store, tenant: str, settings: Settings) -> dict[str, Any]:
    """A job template as `POST /v1/jobs` would check it (its method resolved against its parent), as JSON."""
    check_models(request, [str(root) for root in settings.model_roots])
    check_parent(store, tenant, request)
    return request.model_dump(mode="json")


def retraining_request(store: Store, tenant: str, req: MonitorCreate, monitor_id: str) -> JobCreate:
    """The watched job's own request, continued from it (parent_job_id) on a new file; it holds out
    validation_split of that file, so the retraining job's baseline and final scores are on the new data."""
    raw = store.redis.hget(keys.job_key(tenant, req.job_id), str(keys.JobField.request))
    body = json.loads(raw or "{}")
    hyperparameters = req.retrain_hyperparameters.model_dump(mode="json") if req.retrain_hyperparameters else None
    body.update(
        parent_job_id=req.job_id, validation_file=None, method={"type": body["method"]["type"]},
        hyperparameters=hyperparameters or body.get("hyperparameters") or {},
        metadata={**body.get("metadata", {}), monitors.MONITOR_KEY: monitor_id},
    )  # fmt: skip
    try:
        return JobCreate.model_validate(body)
    except ValueError as e:
        raise ValidationError(f"retrain_hyperparameters: {e}", param="retrain_hyperparameters") from None


@router.post(
    "",
    status_code=201,
    responses=error_responses(
        MalformedBody, ValidationError, JobNotFound, ParentJobNotSucceeded, IncompatibleParentJob, ModelNotAllowed
    ),
)
def create_monitor(
    req: MonitorCreate, tenant: TenantDep, settings: SettingsDep, store: StoreDep, redis: RedisDep
) -> Monitor:
    """Watch a succeeded job: on each `schedule` tick, evaluate it on the newest file named `dataset` and compare
    with its final results; a drop past `threshold` is `degraded` (the `monitor.degraded` webhook event, and with
    `retrain` a job that continues from it on the new file)."""
    job = evaluated_job(store, tenant, req.job_id, None)
    metric = req.metric or ("f1" if job.task == Task.classification else "eval_loss")
    final = job.results.get("final") or {}
    if not isinstance(final.get(metric), int | float):
        known = ", ".join(sorted(k for k, v in final.items() if isinstance(v, int | float))) or "none"
        raise ValidationError(f"metric {metric!r}: job {job.id}'s results.final has: {known}.", param="metric")
    try:
        next_run = monitors.next_time(req.schedule, time.time())
    except Exception as e:  # croniter's errors are ValueErrors, but a fuzzed string must never be a 500
        raise ValidationError(f"schedule {req.schedule!r} is not a cron expression: {e}", param="schedule") from None
    monitor_id = new_id("mon-")
    evaluation = evaluation_request(store, tenant, EvaluationCreate(file=job.training_file, job_id=job.id))
    monitor = Monitor(
        id=monitor_id, tenant=tenant, created_at=time.time(), job_id=job.id, dataset=req.dataset,
        schedule=req.schedule, metric=metric, higher_is_better=monitors.higher_is_better(metric),
        reference=float(final[metric]), threshold=req.threshold, retrain=req.retrain,
        retrain_hyperparameters=req.retrain_hyperparameters, metadata=req.metadata, next_run_at=next_run,
    )  # fmt: skip
    record = {
        "monitor": monitor.model_dump(mode="json", exclude={"last_run"}),
        "evaluation": checked(evaluation, store, tenant, settings),
        "retraining": checked(retraining_request(store, tenant, req, monitor_id), store, tenant, settings)
        if req.retrain
        else None,
        "queue": settings.training_queue(None),
    }
    monitors.schedule_next(redis, settings, record)
    return monitors.view(redis, record)


@router.get("", responses=error_responses(ValidationError))
def list_monitors(tenant: TenantDep, redis: RedisDep, after: MonitorAfter = None, limit: PageSize = 20) -> MonitorList:
    """List the tenant's monitors, newest first, each with its last run."""
    records = [r for r in monitors.all_records(redis, tenant) if after is None or r["monitor"]["id"] < after]
    page = [monitors.view(redis, r) for r in records[:limit]]
    return MonitorList(data=page, has_more=len(records) > limit, last_id=page[-1].id if page else None)


def _record(redis: Any, tenant: str, monitor_id: str) -> dict[str, Any]:
    record = monitors.load(redis, tenant, monitor_id)
    if record is None:
        raise MonitorNotFound(f"No monitor {monitor_id!r}.")
    return record


@router.get("/{monitor_id}", responses=error_responses(MonitorNotFound, ValidationError))
def get_monitor(monitor_id: str, tenant: TenantDep, redis: RedisDep) -> Monitor:
    """Get a monitor: its settings, the reference value, the next scheduled run and the last run."""
    return monitors.view(redis, _record(redis, tenant, monitor_id))


@router.delete("/{monitor_id}", responses=error_responses(MonitorNotFound, ValidationError))
def delete_monitor(monitor_id: str, tenant: TenantDep, settings: SettingsDep, redis: RedisDep) -> MonitorDeleted:
    """Delete a monitor: its scheduled run is dropped, its history too (the jobs it started stay)."""
    if not monitors.delete(redis, settings, tenant, monitor_id):
        raise MonitorNotFound(f"No monitor {monitor_id!r}.")
    return MonitorDeleted(id=monitor_id)


@router.post(
    "/{monitor_id}/run",
    status_code=201,
    # the route's own 429s replace the app's: declare both
    responses=error_responses(MonitorNotFound, ValidationError, QuotaExceeded, RateLimited),
)
def run_monitor(
    monitor_id: str, tenant: TenantDep, settings: SettingsDep, redis: RedisDep, limits: LimitsDep
) -> MonitorRun:
    """Run a monitor now (besides its schedule): the run, `evaluating` with its evaluation job's id (or `failed`
    when the dataset has no file); 429 (`max_active_jobs`) when the tenant has as many jobs not yet finished as
    it may: its evaluation job would be one more, and no run is recorded."""
    record = _record(redis, tenant, monitor_id)
    try:
        return monitors.start_run(redis, settings, record, trigger="manual", max_active=limits.max_active_jobs)
    except AtQuota as e:
        raise quota_exceeded(monitors.QUOTA, e.limit, f"{e}; the run's evaluation job would be one more") from None


@router.get("/{monitor_id}/runs", responses=error_responses(MonitorNotFound, ValidationError))
def list_monitor_runs(
    monitor_id: str,
    tenant: TenantDep,
    redis: RedisDep,
    storage: StorageDep,
    after: RunAfter = None,
    limit: PageSize = 20,
) -> MonitorRunList:
    """A monitor's runs, newest first: the file, the evaluation job, the metric, the decision, the retraining job."""
    _record(redis, tenant, monitor_id)
    found = monitors.runs(redis, tenant, monitor_id, after, limit + 1, storage)
    page = found[:limit]
    return MonitorRunList(data=page, has_more=len(found) > limit, last_id=page[-1].id if page else None)
