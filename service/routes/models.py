"""Base models: the ones under the deployment's model roots, by the names a job's `model` may use."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from ftjobs.client.models import ModelList, ModelObject
from ftjobs.core.base_models import list_models
from ftjobs.service.deps import SettingsDep, TenantDep

router = APIRouter(prefix="/v1/models", tags=["models"])


@router.get("")
async def list_base_models(settings: SettingsDep, tenant: TenantDep) -> ModelList:
    """List the base models this deployment may fine-tune (as the API's machine sees its model roots)."""
    found = await run_in_threadpool(list_models, settings.model_roots)  # a directory walk: off the event loop
    return ModelList(
        data=[ModelObject(id=m.name, created=int((m.path / "config.json").stat().st_mtime)) for m in found]
    )
