"""Models: the base models under the deployment's model roots, by the names a job's `model` may use, and the tenant's
fine-tuned models (`ft:<base>:<suffix>:<job id>`, one per succeeded job; deleting one removes its weights:
service/openai_results.py)."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from ftjobs.client.models import JobStatus, ModelDeleted, ModelList, ModelObject
from ftjobs.core import keys
from ftjobs.core.base_models import list_models
from ftjobs.core.records import as_text
from ftjobs.core.settings import Settings
from ftjobs.service.deps import SettingsDep, StorageDep, StoreDep, TenantDep
from ftjobs.service.errors import ModelNotDeletable, ModelNotFound, ResourceInUse, ValidationError, error_responses
from ftjobs.service.openai_jobs import FT_PREFIX, fine_tuned_job, fine_tuned_model
from ftjobs.service.openai_results import delete_model as remove_model
from ftjobs.service.store import Store

router = APIRouter(prefix="/v1/models", tags=["models"])


def base_models(settings: Settings) -> list[ModelObject]:
    """A directory walk of the model roots (call it off the event loop)."""
    found = list_models(settings.model_roots)
    return [ModelObject(id=m.name, created=int((m.path / "config.json").stat().st_mtime)) for m in found]


def fine_tuned_models(store: Store, tenant: str) -> list[ModelObject]:
    """The tenant's fine-tuned models, newest first (its succeeded jobs whose model it has not deleted)."""
    deleted = {as_text(m) for m in store.redis.smembers(keys.deleted_models_key(tenant))}
    models, after = [], None
    while True:
        page = store.list_jobs(tenant, after, 100, JobStatus.succeeded)
        for job in page.data:
            name = fine_tuned_model(job)
            if name and job.id not in deleted:
                models.append(ModelObject(id=name, created=job.finished_at or job.created_at, owned_by=tenant))
        if not page.has_more:
            return models
        after = page.last_id


@router.get("")
async def list_base_models(settings: SettingsDep, tenant: TenantDep, store: StoreDep) -> ModelList:
    """List the base models this deployment may fine-tune (as the API's machine sees its model roots), then the
    tenant's fine-tuned models (`ft:...`, owned_by the tenant)."""
    base = await run_in_threadpool(base_models, settings)  # a directory walk: off the event loop
    return ModelList(data=[*base, *await run_in_threadpool(fine_tuned_models, store, tenant)])


@router.get("/{model:path}", responses=error_responses(ModelNotFound, ValidationError))
def get_model(model: str, settings: SettingsDep, tenant: TenantDep, store: StoreDep) -> ModelObject:
    """Get a base model by name, or one of the tenant's fine-tuned models (`ft:...`)."""
    if model.startswith(FT_PREFIX):
        job = fine_tuned_job(store, tenant, model)
        return ModelObject(id=model, created=job.finished_at or job.created_at, owned_by=tenant)
    found = next((m for m in base_models(settings) if m.id == model), None)
    if found is None:
        raise ModelNotFound(f"No model {model!r}.", param="model")
    return found


@router.delete(
    "/{model:path}", responses=error_responses(ModelNotFound, ModelNotDeletable, ResourceInUse, ValidationError)
)
def delete_model(
    model: str, settings: SettingsDep, tenant: TenantDep, store: StoreDep, storage: StorageDep
) -> ModelDeleted:
    """Delete a fine-tuned model: its weights leave the artifact store (the job keeps its record and metrics)."""
    if not model.startswith(FT_PREFIX):
        get_model(model, settings, tenant, store)  # 404 for no such model
        raise ModelNotDeletable(
            f"{model!r} is a base model; only fine-tuned models (`ft:...`) can be deleted.", "model"
        )
    remove_model(store, storage, fine_tuned_job(store, tenant, model))
    return ModelDeleted(id=model)
