"""Hyperparameter sweeps: create (checked, then driven by the workers), list, get, cancel (with every trial)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from ftjobs.client.models.sweeps import SWEEP_ID_PATTERN, Sweep, SweepCreate, SweepList
from ftjobs.core.storage import remove_checkpoints
from ftjobs.service import sweeps
from ftjobs.service.deps import LimitsDep, QueueDep, SettingsDep, StorageDep, StoreDep, TenantDep
from ftjobs.service.errors import (
    FileNotFound,
    IncompatibleFile,
    IncompatibleParentJob,
    JobLimitExceeded,
    JobNotFound,
    MalformedBody,
    ModelNotAllowed,
    ParentJobNotSucceeded,
    RequestEntityTooLarge,
    ServiceError,
    ValidationError,
    error_responses,
)
from ftjobs.service.job_checks import check_files, check_job_limits, check_models, check_parent
from ftjobs.service.sweeps import SweepNotCancellable, SweepNotFound

router = APIRouter(prefix="/v1/sweeps", tags=["sweeps"])
SweepAfter = Annotated[
    str | None, Query(pattern=SWEEP_ID_PATTERN, description="Cursor: `last_id` of the previous page.")
]


@router.post(
    "",
    status_code=201,
    responses=error_responses(
        MalformedBody,
        RequestEntityTooLarge,
        FileNotFound,
        ValidationError,
        IncompatibleFile,
        ModelNotAllowed,
        JobNotFound,
        ParentJobNotSucceeded,
        IncompatibleParentJob,
        JobLimitExceeded,
    ),
)
def create_sweep(
    req: SweepCreate, tenant: TenantDep, settings: SettingsDep, store: StoreDep, limits: LimitsDep
) -> Sweep:
    """Create a sweep: the workers start its trials (ordinary jobs tagged with `metadata.sweep_id`), at most
    `parallelism` at a time, each with a point of the search space that optuna samples, and prune bad ones."""
    base = req.job
    try:  # the base job's checks, as POST /v1/jobs makes them; their fields are under `job.`
        check_models(base, [str(root) for root in settings.model_roots])
        check_files(store, tenant, base)
        check_parent(store, tenant, base)
        check_job_limits(store, tenant, base, limits)
    except ServiceError as e:
        e.param = f"job.{e.param}" if e.param else e.param
        raise
    if settings.training_queue(base.resources.hardware) is None:
        served = ", ".join(sorted(settings.hardware_queues)) or "none"
        raise ValidationError(f"no workers for hardware {base.resources.hardware!r} (served: {served})",
                              param="job.resources.hardware")  # fmt: skip
    sweeps.check_sweep(req)
    return sweeps.create_sweep(store, tenant, req)


@router.get("", response_model=SweepList, responses=error_responses(ValidationError))
def list_sweeps(
    tenant: TenantDep,
    store: StoreDep,
    after: SweepAfter = None,
    limit: Annotated[int, Query(ge=1, le=100, description="Page size.")] = 20,
) -> SweepList:
    """List sweeps, newest first (cursor pagination with `after`)."""
    return sweeps.list_sweeps(store, tenant, after, limit)


@router.get("/{sweep_id}", responses=error_responses(SweepNotFound, ValidationError))
def get_sweep(sweep_id: str, tenant: TenantDep, store: StoreDep) -> Sweep:
    """Get a sweep: every trial (params, state, metric, steps) and the best one with its artifacts."""
    return sweeps.get_sweep(store, tenant, sweep_id)


@router.post("/{sweep_id}/cancel", responses=error_responses(SweepNotFound, SweepNotCancellable, ValidationError))
def cancel_sweep(sweep_id: str, tenant: TenantDep, store: StoreDep, queue: QueueDep, storage: StorageDep) -> Sweep:
    """Cancel a sweep: no trial starts after this, and every trial still queued or running is cancelled (again
    for a cancelled sweep: idempotent)."""

    def cancel_job(job_id: str) -> None:  # as POST /v1/jobs/{id}/cancel
        job, cancelled_now = store.cancel_job(tenant, job_id)
        if cancelled_now:
            queue.cancel(job_id, job.attempt)
            remove_checkpoints(storage, tenant, job_id)

    return sweeps.cancel_sweep(store, tenant, sweep_id, cancel_job)
