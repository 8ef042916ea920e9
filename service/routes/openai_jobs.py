"""OpenAI's fine-tuning routes (`/v1/fine_tuning/jobs`), for the official `openai` SDK: the same jobs, checks, store,
queue and worker as `/v1/jobs` (its handlers are called), in OpenAI's shapes (`service/openai_jobs.py`)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response

from ftjobs.client.models import (
    FineTuningJob,
    FineTuningJobCheckpointList,
    FineTuningJobCreate,
    FineTuningJobEventList,
    FineTuningJobList,
    Job,
)
from ftjobs.service import pausing
from ftjobs.service.deps import LimitsDep, QueueDep, SettingsDep, StorageDep, StoreDep, TenantDep
from ftjobs.service.errors import (
    FileNotFound,
    IdempotencyKeyInProgress,
    IdempotencyKeyReused,
    IncompatibleFile,
    IncompatibleParentJob,
    InvalidRequest,
    JobLimitExceeded,
    JobNotCancellable,
    JobNotFound,
    JobNotPausable,
    JobNotPaused,
    MalformedBody,
    ModelNotAllowed,
    ModelNotFound,
    ParentJobNotSucceeded,
    QuotaExceeded,
    RateLimited,
    RequestEntityTooLarge,
    ValidationError,
    error_responses,
)
from ftjobs.service.openai_jobs import list_events, to_job_create, to_openai_job
from ftjobs.service.openai_results import list_checkpoints, result_files
from ftjobs.service.routes import jobs
from ftjobs.service.routes.jobs import MAX_JSON_BODY_BYTES, IdempotencyKey
from ftjobs.service.store import Store

router = APIRouter(prefix="/v1/fine_tuning/jobs", tags=["fine_tuning"])

Limit = Annotated[int, Query(ge=1, le=100, description="Page size.")]
After = Annotated[
    str | None, Query(max_length=64, description="Cursor: the `id` of the last item of the previous page.")
]
METADATA_QUERY = {
    "parameters": [
        {
            "name": "metadata",
            "in": "query",
            "required": False,
            "style": "deepObject",
            "explode": True,
            "description": "Only jobs whose metadata has these pairs: `metadata[k]=v` (`metadata=null`: no metadata).",
            "schema": {"type": "object", "additionalProperties": {"type": "string"}},
        }
    ]
}


def shown(job: Job, store: Store, storage: StorageDep) -> FineTuningJob:
    return to_openai_job(job, result_files(store, storage, job))


def metadata_filter(request: Request) -> dict[str, str] | None:
    """`metadata[k]=v` pairs of the query ({} = none given); None for `metadata=null` (jobs without metadata)."""
    if request.query_params.get("metadata") == "null":
        return None
    pairs = {}
    for name, value in request.query_params.multi_items():
        if name.startswith("metadata[") and name.endswith("]"):
            pairs[name[len("metadata[") : -1]] = value
    return pairs


@router.post(
    "",
    max_body_size=MAX_JSON_BODY_BYTES,
    responses=error_responses(
        *(MalformedBody, RequestEntityTooLarge, FileNotFound, IdempotencyKeyReused, IdempotencyKeyInProgress),
        *(ValidationError, InvalidRequest, IncompatibleFile, ModelNotAllowed, ModelNotFound, JobNotFound),
        *(ParentJobNotSucceeded, IncompatibleParentJob, JobLimitExceeded, QuotaExceeded, RateLimited),
    ),
)
def create_fine_tuning_job(
    req: FineTuningJobCreate,
    response: Response,
    tenant: TenantDep,
    settings: SettingsDep,
    store: StoreDep,
    storage: StorageDep,
    queue: QueueDep,
    limits: LimitsDep,
    idempotency_key: IdempotencyKey = None,
) -> FineTuningJob:
    """Create a fine-tuning job (OpenAI's request; ftjobs' options in extra fields): POST /v1/jobs underneath."""
    job = jobs.create_job(
        req=to_job_create(req, store, tenant),
        response=response,
        tenant=tenant,
        settings=settings,
        store=store,
        queue=queue,
        limits=limits,
        idempotency_key=idempotency_key,
    )
    response.status_code = 200
    return shown(job, store, storage)


@router.get("", openapi_extra=METADATA_QUERY, responses=error_responses(ValidationError))
def list_fine_tuning_jobs(
    request: Request, tenant: TenantDep, store: StoreDep, storage: StorageDep, after: After = None, limit: Limit = 20
) -> FineTuningJobList:
    """List fine-tuning jobs, newest first (cursor: `after`), optionally only those with some metadata."""
    wanted = metadata_filter(request)
    page: list[FineTuningJob] = []
    cursor = None if after is None or not after.startswith("ftjob-") else after
    if after is not None and cursor is None:
        raise ValidationError("after: must be a job id `ftjob-...`", param="after")
    has_more = False
    while True:
        batch = store.list_jobs(tenant, cursor, 100)
        for job in batch.data:
            if wanted is None and job.metadata or wanted and any(job.metadata.get(k) != v for k, v in wanted.items()):
                continue
            if len(page) == limit:
                has_more = True
                break
            page.append(shown(job, store, storage))
        if has_more or not batch.has_more:
            break
        cursor = batch.last_id
    return FineTuningJobList(data=page, has_more=has_more, last_id=page[-1].id if page else None)


@router.get("/{fine_tuning_job_id}", responses=error_responses(JobNotFound, ValidationError))
def retrieve_fine_tuning_job(
    fine_tuning_job_id: str, tenant: TenantDep, store: StoreDep, storage: StorageDep
) -> FineTuningJob:
    """Get a fine-tuning job (`fine_tuned_model` and `result_files` once it succeeded)."""
    return shown(store.get_job(tenant, fine_tuning_job_id), store, storage)


@router.post("/{fine_tuning_job_id}/cancel", responses=error_responses(JobNotFound, JobNotCancellable, ValidationError))
def cancel_fine_tuning_job(
    fine_tuning_job_id: str, tenant: TenantDep, store: StoreDep, storage: StorageDep, queue: QueueDep
) -> FineTuningJob:
    """Cancel a fine-tuning job (as POST /v1/jobs/{id}/cancel)."""
    job = jobs.cancel_job(job_id=fine_tuning_job_id, tenant=tenant, store=store, queue=queue, storage=storage)
    return shown(job, store, storage)


@router.post("/{fine_tuning_job_id}/pause", responses=error_responses(JobNotFound, JobNotPausable, ValidationError))
def pause_fine_tuning_job(
    fine_tuning_job_id: str, tenant: TenantDep, store: StoreDep, storage: StorageDep, queue: QueueDep
) -> FineTuningJob:
    """Pause a job (as POST /v1/jobs/{id}/pause): a running one checkpoints at its next step, then is `paused`."""
    return shown(pausing.pause_job(store, queue, tenant, fine_tuning_job_id), store, storage)


@router.post("/{fine_tuning_job_id}/resume", responses=error_responses(JobNotFound, JobNotPaused, ValidationError))
def resume_fine_tuning_job(
    fine_tuning_job_id: str, tenant: TenantDep, store: StoreDep, storage: StorageDep, queue: QueueDep
) -> FineTuningJob:
    """Resume a paused job (as POST /v1/jobs/{id}/resume): queued again, it continues from its checkpoint."""
    return shown(pausing.resume_job(store, queue, tenant, fine_tuning_job_id), store, storage)


@router.get("/{fine_tuning_job_id}/events", responses=error_responses(JobNotFound, ValidationError))
def list_fine_tuning_events(
    fine_tuning_job_id: str, tenant: TenantDep, store: StoreDep, after: After = None, limit: Limit = 20
) -> FineTuningJobEventList:
    """List a job's events, newest first (OpenAI's order; cursor: the last event id seen)."""
    return list_events(store, tenant, fine_tuning_job_id, after, limit)


@router.get("/{fine_tuning_job_id}/checkpoints", responses=error_responses(JobNotFound, ValidationError))
def list_fine_tuning_checkpoints(
    fine_tuning_job_id: str,
    request: Request,
    tenant: TenantDep,
    store: StoreDep,
    after: After = None,
    limit: Annotated[int, Query(ge=1, le=100, description="Page size.")] = 10,
) -> FineTuningJobCheckpointList:
    """List a succeeded job's checkpoints, newest first: the final model, then the last epochs' weights."""
    job = store.get_job(tenant, fine_tuning_job_id)
    return list_checkpoints(store, job, str(request.base_url), after, limit)
