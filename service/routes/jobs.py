"""Fine-tuning jobs: create (validated, then queued), list, get, cancel, pause, resume, events and metrics."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request, Response
from pydantic import AfterValidator
from starlette.concurrency import run_in_threadpool

from ftjobs.client.models import (
    JOB_ID_PATTERN,
    EventList,
    Job,
    JobCreate,
    JobError,
    JobList,
    JobStatus,
    MetricList,
)
from ftjobs.core.queue import JobQueue
from ftjobs.core.records import new_id
from ftjobs.core.storage import remove_checkpoints
from ftjobs.service import pausing, sse
from ftjobs.service.deps import LimitsDep, QueueDep, ReadsDep, SettingsDep, StorageDep, StoreDep, TenantDep
from ftjobs.service.errors import (
    FileNotFound,
    IdempotencyKeyInProgress,
    IdempotencyKeyReused,
    IncompatibleFile,
    IncompatibleParentJob,
    JobLimitExceeded,
    JobNotCancellable,
    JobNotFound,
    JobNotPausable,
    JobNotPaused,
    MalformedBody,
    ModelNotAllowed,
    ParentJobNotSucceeded,
    QuotaExceeded,
    RateLimited,
    RequestEntityTooLarge,
    TooManyStreams,
    ValidationError,
    error_responses,
)
from ftjobs.service.job_checks import check_files, check_job_limits, check_models, check_parent
from ftjobs.service.store import Store, stream_cursor

log = logging.getLogger("ftjobs.service")
router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

STREAM_ID_PATTERN = r"^[0-9]+(-[0-9]+)?$"
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
    Query(
        pattern=STREAM_ID_PATTERN,
        description="Cursor: the last seen id `<ms>-<seq>` (`0-0` = from the start); each part at most 2^64-1.",
    ),
    AfterValidator(stream_cursor),  # past 2^64-1: a 422 here, not Redis's refusal (a 500)
]
LastEventId = Annotated[
    str | None,
    Header(
        alias="Last-Event-ID",
        pattern=STREAM_ID_PATTERN,
        description="The last event id seen: as `after`, and preferred to it (EventSource sends it to resume).",
    ),
    AfterValidator(stream_cursor),
]
REPLAYED = {
    "model": Job,
    "description": "Idempotent replay: the job created earlier with this Idempotency-Key.",
}


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


def submit(store: Store, queue: JobQueue, tenant: str, job_id: str, training_queue: str | None = None) -> None:
    """Enqueue the job's file validation (it stays validating_files until a worker has checked the files
    with the model's tokenizer, then queues it); a job that cannot be enqueued is failed."""
    try:
        queue.enqueue_validation(tenant, job_id, queue=training_queue)
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
            JobLimitExceeded,
            QuotaExceeded,
            RateLimited,  # the route's own 429s replace the app's: declare both
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
    limits: LimitsDep,
    idempotency_key: IdempotencyKey = None,
) -> Job:
    """Create a fine-tuning job. It starts in `validating_files` (a worker checks the files with the model's
    tokenizer within seconds), then is `queued` for training, or `failed` with the reason."""
    check_models(req, [str(root) for root in settings.model_roots])
    check_files(store, tenant, req)
    check_parent(store, tenant, req)
    check_job_limits(store, tenant, req, limits)
    training_queue = settings.training_queue(req.resources.hardware)  # docs/scaling.md
    if training_queue is None:
        served = ", ".join(sorted(settings.hardware_queues)) or "none"
        raise ValidationError(f"no workers for hardware {req.resources.hardware!r} (served: {served})",
                              param="resources.hardware")  # fmt: skip
    job_id = new_id("ftjob-")
    if idempotency_key:
        existing = store.claim_idempotency_key(tenant, idempotency_key, job_id, request_sha256(req))
        if existing:
            response.status_code = 200
            response.headers["Idempotent-Replayed"] = "true"
            return replayed_job(store, tenant, existing)
    try:
        store.create_job(tenant, req, job_id, queue=training_queue, max_active=limits.max_active_jobs)
    except Exception:
        if idempotency_key:
            try:
                store.release_idempotency_key(tenant, idempotency_key, job_id)
            except Exception:
                log.warning("could not release idempotency key for %s", job_id)
        raise
    submit(store, queue, tenant, job_id, training_queue)
    return store.get_job(tenant, job_id)


# The polled reads below are async over redis.asyncio (service/reads.py) and answer the model's JSON as bytes
# (`response_model` keeps the spec): no thread hop, no second validation of what the reader built.
@router.get("", response_model=JobList, responses=error_responses(ValidationError))
async def list_jobs(
    tenant: TenantDep,
    store: StoreDep,
    reads: ReadsDep,
    after: JobAfter = None,
    limit: Annotated[int, Query(ge=1, le=100, description="Page size.")] = 20,
    status: Annotated[JobStatus | None, Query(description="Only jobs in this status.")] = None,
) -> Response:
    """List jobs, newest first (cursor pagination with `after`)."""
    if status is not None and not store.status_index_ready:
        await run_in_threadpool(store.ensure_status_index)  # once per process (a backfill, once per deployment)
    return json_response(await reads.jobs(tenant, after, limit, status))


@router.get("/{job_id}", response_model=Job, responses=error_responses(JobNotFound, ValidationError))
async def get_job(job_id: str, tenant: TenantDep, store: StoreDep, reads: ReadsDep) -> Response:
    """Get a job: status, progress, last metrics, results, error and artifacts."""
    job = await reads.job(tenant, job_id)
    if job is None:  # the sync store says why (404), or finds it where the hot path does not look
        job = await run_in_threadpool(store.get_job, tenant, job_id)
    return json_response(job.model_dump_json().encode())


@router.post("/{job_id}/cancel", responses=error_responses(JobNotFound, JobNotCancellable, ValidationError))
def cancel_job(job_id: str, tenant: TenantDep, store: StoreDep, queue: QueueDep, storage: StorageDep) -> Job:
    """Cancel a job: at once if not started, within seconds if running (a long step is interrupted)."""
    job, cancelled_now = store.cancel_job(tenant, job_id)
    if cancelled_now:  # its validation (attempt 0) or its first training attempt, still in RQ's queue
        queue.cancel(job_id, job.attempt)
        remove_checkpoints(storage, tenant, job_id)  # a paused (or preempted) job's: never resumed now
    return job


# Pause and resume live in service/pausing.py (`pause_job(store, queue, tenant, job_id)`, `resume_job(...)`), shared
# with the OpenAI-compatible routes.
@router.post("/{job_id}/pause", responses=error_responses(JobNotFound, JobNotPausable, ValidationError))
def pause_job(job_id: str, tenant: TenantDep, store: StoreDep, queue: QueueDep) -> Job:
    """Pause a job: at once if not started; a running job checkpoints at its next step, then is `paused`."""
    return pausing.pause_job(store, queue, tenant, job_id)


@router.post("/{job_id}/resume", responses=error_responses(JobNotFound, JobNotPaused, ValidationError))
def resume_job(job_id: str, tenant: TenantDep, store: StoreDep, queue: QueueDep) -> Job:
    """Resume a paused job: queued again, it continues from its checkpoint (a pause spends no attempt)."""
    return pausing.resume_job(store, queue, tenant, job_id)


@router.get(
    "/{job_id}/events",
    response_model=EventList,
    responses={
        200: {
            "description": "A page of events (JSON), or with `Accept: text/event-stream` the live stream.",
            "content": sse.OPENAPI_CONTENT,
        },
        **error_responses(JobNotFound, ValidationError, RateLimited, TooManyStreams),
    },
)
async def list_events(
    job_id: str,
    request: Request,
    tenant: TenantDep,
    store: StoreDep,
    reads: ReadsDep,
    after: StreamAfter = None,
    limit: Annotated[int, Query(ge=1, le=1000, description="Page size.")] = 100,
    last_event_id: LastEventId = None,
    # Hidden from the spec: `Accept: text/event-stream` is how it is declared (a fuzzer that asks for streams of
    # jobs that never end only waits); `?stream=true` is for curl and browsers' EventSource.
    stream: Annotated[bool, Query(include_in_schema=False)] = False,
) -> EventList | Response:
    """List a job's events, oldest first (cursor: the last seen event id). With `Accept: text/event-stream` (or
    `?stream=true`): the backlog, then each event as it is written, as Server-Sent Events (`id`, `event`: its
    type, `data`: the Event), keep-alive comments while idle, closed after the event that ends the job; resume
    with `Last-Event-ID`."""
    cursor = last_event_id or after  # a reconnecting EventSource repeats the URL's `after`: the header wins
    if stream or sse.wants_event_stream(request.headers.get("accept")):
        await run_in_threadpool(store.require_job, tenant, job_id)
        streaming: sse.Streaming = request.app.state.streaming  # not sse.StreamingDep: a sync one costs a thread hop
        return sse.event_stream_response(streaming, tenant, job_id, cursor)
    page = await reads.events(tenant, job_id, cursor, limit)
    if page is None:  # not in Redis, or an empty page: the store says why, or reads the archive
        return await run_in_threadpool(store.events, tenant, job_id, cursor, limit)
    return json_response(page)


@router.get("/{job_id}/metrics", response_model=MetricList, responses=error_responses(JobNotFound, ValidationError))
async def list_metrics(
    job_id: str,
    tenant: TenantDep,
    store: StoreDep,
    reads: ReadsDep,
    after: StreamAfter = None,
    limit: Annotated[int, Query(ge=1, le=1000, description="Page size.")] = 100,
) -> MetricList | Response:
    """List a job's metric points, oldest first (cursor: the last seen point id)."""
    page = await reads.metrics(tenant, job_id, after, limit)
    if page is None:  # not in Redis, or an empty page: the store says why, or reads the archive
        return await run_in_threadpool(store.metrics, tenant, job_id, after, limit)
    return json_response(page)


def json_response(body: bytes) -> Response:
    """A 200 whose body is a model's JSON already (FastAPI passes a Response through as it is)."""
    return Response(body, media_type="application/json")
