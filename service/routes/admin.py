"""The operator's view (admin scope, checked by `AuthFirst`): queues with their backlog, workers with their job."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from ftjobs.client.models.admin import QueueOverview, WorkerOverview
from ftjobs.core.fleet import queue_overview, worker_overview
from ftjobs.service.deps import RedisDep, SettingsDep, TenantDep

router = APIRouter(prefix="/v1/admin", tags=["admin"])


@router.get("/queues")
async def list_queues(redis: RedisDep, settings: SettingsDep, _tenant: TenantDep) -> QueueOverview:
    """Each queue: RQ depth, oldest waiting age, pending jobs per tenant, running attempts; jobs by status."""
    return await run_in_threadpool(queue_overview, redis, settings)


@router.get("/workers")
async def list_workers(redis: RedisDep, _tenant: TenantDep) -> WorkerOverview:
    """Each RQ worker: queues, state, the job it runs (id, attempt, tenant), heartbeat age, hardware."""
    return await run_in_threadpool(worker_overview, redis)
