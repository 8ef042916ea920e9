"""Fine-tuning jobs: create (validated, then queued), list, get, cancel, events and metrics."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Sequence
from typing import Annotated

from fastapi import APIRouter, Header, Query, Response

from client.models import (
    ADAPTER_SHAPE_FIELDS,
    JOB_ID_PATTERN,
    TASK_FORMATS,
    EventList,
    Job,
    JobCreate,
    JobError,
    JobList,
    JobStatus,
    Method,
    MetricList,
)
from service.deps import QueueDep, SettingsDep, StoreDep, TenantDep
from service.errors import (
    FileNotFound,
    IdempotencyKeyInProgress,
    IdempotencyKeyReused,
    IncompatibleFile,
    IncompatibleParentJob,
    JobNotCancellable,
    JobNotFound,
    MalformedBody,
    ModelNotAllowed,
    ParentJobNotSucceeded,
    RequestEntityTooLarge,
    ValidationError,
    error_responses,
)
from service.queue import JobQueue
from service.records import new_id
from service.store import Store

log = logging.getLogger("ftjobs.service")
router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

STREAM_ID_PATTERN = r"^\d+(-\d+)?$"
MAX_JSON_BODY_BYTES = 1024 * 1024  # a JobCreate is a few KB; never buffer more than this
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=255,
        pattern=r"^[!-~]+$",
        description="Retry-safe submits: the same key (within 24 h) returns the same job.",
    ),
]
JobAfter = Annotated[
    str | None, Query(pattern=JOB_ID_PATTERN, description="Cursor: `last_id` of the previous page.")
]
StreamAfter = Annotated[
    str | None,
    Query(pattern=STREAM_ID_PATTERN, description="Cursor: the last seen id (`0-0` = from the start)."),
]
REPLAYED = {
    "model": Job,
    "description": "Idempotent replay: the job created earlier with this Idempotency-Key.",
}


def check_model(model: str, roots: Sequence[str]) -> None:
    """Absolute paths must lie under a model root; relative ones (resolved by the worker) must not escape."""
    norm = os.path.normpath(model)
    if model.startswith("~") or norm == "." or norm == ".." or norm.startswith("../"):
        raise ModelNotAllowed(f"model {model!r} is not a path under a model root.", param="model")
    if os.path.isabs(norm) and not any(
        norm == root or norm.startswith(root.rstrip("/") + "/") for root in roots
    ):
        raise ModelNotAllowed(
            f"model {model!r} is outside the configured model roots ({', '.join(roots)}).", param="model"
        )


def check_files(store: Store, tenant: str, req: JobCreate) -> None:
    """The files exist for this tenant and their row format can train the task."""
    allowed = TASK_FORMATS[req.task]
    train = store.get_file(tenant, req.training_file, param="training_file")
    if train.format not in allowed:
        needs = ", ".join(sorted(allowed))
        raise IncompatibleFile(
            f"training_file {train.id} has format {train.format.value}; "
            f"task {req.task.value} needs one of: {needs}.",
            param="training_file",
        )
    if req.validation_file:
        valid = store.get_file(tenant, req.validation_file, param="validation_file")
        if valid.format != train.format:
            raise IncompatibleFile(
                f"validation_file {valid.id} has format {valid.format.value}; "
                f"training_file has {train.format.value}; they must match.",
                param="validation_file",
            )
    if req.reference_file:
        ref = store.get_file(tenant, req.reference_file, param="reference_file")
        if ref.format not in allowed:
            raise IncompatibleFile(
                f"reference_file {ref.id} has format {ref.format.value}; task {req.task.value} needs one of: "
                f"{', '.join(sorted(allowed))}.",
                param="reference_file",
            )


def check_parent(store: Store, tenant: str, req: JobCreate) -> None:
    """parent_job_id: a succeeded job of this tenant, of the same task, method type and adapter shape.

    `req.method` becomes the resolved method (`inherit_method`): what the child leaves out is the parent's.
    """
    if req.parent_job_id is None:
        return
    try:
        parent = store.get_job(tenant, req.parent_job_id)
    except JobNotFound:
        raise JobNotFound(f"No job {req.parent_job_id!r}.", param="parent_job_id") from None
    if parent.status != JobStatus.succeeded:
        raise ParentJobNotSucceeded(
            f"parent_job_id {parent.id} is {parent.status.value}; only a succeeded job can be continued.",
            param="parent_job_id",
        )
    if parent.task != req.task or parent.method.type != req.method.type:
        raise IncompatibleParentJob(
            f"parent_job_id {parent.id} trained {parent.method.type} for {parent.task.value}; this job asks for "
            f"{req.method.type} for {req.task.value}: they must match.",
            param="parent_job_id",
        )
    req.method = inherit_method(parent, req.method)


PEFT_DEFAULT_FIELDS = ("target_modules", "feedforward_modules")  # null: whatever peft picks for the architecture


def inherit_method(parent: Job, method: Method) -> Method:
    """The parent's method settings (as its worker resolved them, e.g. the target modules peft picked) overridden
    by those the child sets; a setting that shapes the adapter may only repeat the parent's value."""
    trained = {**parent.method.model_dump(), **(parent.resolved_hyperparameters.get("method") or {})}
    given = method.model_dump(include=method.model_fields_set - {"type"})
    given = {k: v for k, v in given.items() if v is not None}  # null (auto) inherits too
    shape = ADAPTER_SHAPE_FIELDS.get(method.type, ())
    for name in shape:
        if name not in given or (trained.get(name) is None and name in PEFT_DEFAULT_FIELDS):
            continue  # left out (inherited), or peft's default modules the parent's worker did not record
        if not _same_setting(given[name], trained.get(name)):
            raise IncompatibleParentJob(
                f"method.{name}={json.dumps(given[name])} differs from the parent job {parent.id}'s "
                f"{name}={json.dumps(trained.get(name))}: a continued {method.type} keeps the parent's "
                f"{', '.join(shape)}. Leave method.{name} out to inherit it, or train a new job without "
                "parent_job_id.",
                param=f"method.{name}",
            )
    cls = type(method)
    try:
        return cls.model_validate({k: v for k, v in {**trained, **given}.items() if k in cls.model_fields})
    except ValueError as e:  # a parent recorded by an older version with settings this one rejects
        raise IncompatibleParentJob(
            f"parent_job_id {parent.id}'s method settings cannot be continued: {e}", param="parent_job_id"
        ) from None


def _same_setting(a: object, b: object) -> bool:
    """Equal; module lists and adapter positions in any order."""
    if isinstance(a, list) and isinstance(b, list):
        return sorted(map(str, a)) == sorted(map(str, b))
    return a == b


def request_sha256(req: JobCreate) -> str:
    """Fingerprint of the request as parsed (key order, whitespace and spelled-out defaults do not matter)."""
    return hashlib.sha256(json.dumps(req.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()


def replayed_job(store: Store, tenant: str, job_id: str) -> Job:
    """The job an Idempotency-Key names; waits briefly if the first request is still creating it."""
    for _ in range(20):
        try:
            return store.get_job(tenant, job_id)
        except JobNotFound:
            time.sleep(0.1)
    raise IdempotencyKeyInProgress("A request with this Idempotency-Key is still in progress; retry shortly.")


def submit(store: Store, queue: JobQueue, tenant: str, job_id: str) -> None:
    """Enqueue the job's file validation (it stays validating_files until a worker has checked the files
    with the model's tokenizer, then queues it); a job that cannot be enqueued is failed."""
    try:
        queue.enqueue_validation(tenant, job_id)
    except Exception:
        try:
            store.mark_failed(
                tenant, job_id, JobError(code="internal_error", message="The job could not be queued.")
            )
        except Exception:
            log.exception("could not mark %s failed after an enqueue error", job_id)
        raise


@router.post(
    "",
    status_code=201,
    max_body_size=MAX_JSON_BODY_BYTES,
    responses={
        200: REPLAYED,
        **error_responses(
            MalformedBody,
            RequestEntityTooLarge,
            FileNotFound,
            IdempotencyKeyReused,
            IdempotencyKeyInProgress,
            ValidationError,
            IncompatibleFile,
            ModelNotAllowed,
            JobNotFound,
            ParentJobNotSucceeded,
            IncompatibleParentJob,
        ),
    },
)
def create_job(
    req: JobCreate,
    response: Response,
    tenant: TenantDep,
    settings: SettingsDep,
    store: StoreDep,
    queue: QueueDep,
    idempotency_key: IdempotencyKey = None,
) -> Job:
    """Create a fine-tuning job. It starts in `validating_files` (a worker checks the files with the model's
    tokenizer within seconds), then is `queued` for training, or `failed` with the reason."""
    check_model(req.model, settings.model_roots)
    check_files(store, tenant, req)
    check_parent(store, tenant, req)
    job_id = new_id("ftjob-")
    if idempotency_key:
        existing = store.claim_idempotency_key(tenant, idempotency_key, job_id, request_sha256(req))
        if existing:
            response.status_code = 200
            response.headers["Idempotent-Replayed"] = "true"
            return replayed_job(store, tenant, existing)
    try:
        store.create_job(tenant, req, job_id, queue=settings.queue)
    except Exception:
        if idempotency_key:
            try:
                store.release_idempotency_key(tenant, idempotency_key, job_id)
            except Exception:
                log.warning("could not release idempotency key for %s", job_id)
        raise
    submit(store, queue, tenant, job_id)
    return store.get_job(tenant, job_id)


@router.get("", responses=error_responses(ValidationError))
def list_jobs(
    tenant: TenantDep,
    store: StoreDep,
    after: JobAfter = None,
    limit: Annotated[int, Query(ge=1, le=100, description="Page size.")] = 20,
    status: Annotated[JobStatus | None, Query(description="Only jobs in this status.")] = None,
) -> JobList:
    """List jobs, newest first (cursor pagination with `after`)."""
    return store.list_jobs(tenant, after, limit, status)


@router.get("/{job_id}", responses=error_responses(JobNotFound, ValidationError))
def get_job(job_id: str, tenant: TenantDep, store: StoreDep) -> Job:
    """Get a job: status, progress, last metrics, results, error and artifacts."""
    return store.get_job(tenant, job_id)


@router.post("/{job_id}/cancel", responses=error_responses(JobNotFound, JobNotCancellable, ValidationError))
def cancel_job(job_id: str, tenant: TenantDep, store: StoreDep, queue: QueueDep) -> Job:
    """Cancel a job: at once if not started, at the worker's next step if running."""
    job, cancelled_now = store.cancel_job(tenant, job_id)
    if cancelled_now:  # its validation (attempt 0) or its first training attempt, still in RQ's queue
        queue.cancel(job_id, job.attempt)
    return job


@router.get("/{job_id}/events", responses=error_responses(JobNotFound, ValidationError))
def list_events(
    job_id: str,
    tenant: TenantDep,
    store: StoreDep,
    after: StreamAfter = None,
    limit: Annotated[int, Query(ge=1, le=1000, description="Page size.")] = 100,
) -> EventList:
    """List a job's events, oldest first (cursor: the last seen event id)."""
    return store.events(tenant, job_id, after, limit)


@router.get("/{job_id}/metrics", responses=error_responses(JobNotFound, ValidationError))
def list_metrics(
    job_id: str,
    tenant: TenantDep,
    store: StoreDep,
    after: StreamAfter = None,
    limit: Annotated[int, Query(ge=1, le=1000, description="Page size.")] = 100,
) -> MetricList:
    """List a job's metric points, oldest first (cursor: the last seen point id)."""
    return store.metrics(tenant, job_id, after, limit)
