"""The operator's view (`/v1/admin/*`, admin scope): queues with their backlog, workers with their job and hardware."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class TenantBacklog(BaseModel):
    """One tenant's jobs on one queue that no worker has taken yet."""

    tenant: str
    pending: int = Field(description="Waiting outside RQ for their turn (fair admission: core/admission.py).")
    admitted: int = Field(description="Admitted into RQ's list, not yet taken by a worker.")


class QueueInfo(BaseModel):
    name: str
    depth: int = Field(description="Jobs in RQ's list (admitted, waiting for a worker).")
    pending: int = Field(description="Jobs waiting outside RQ for admission, all tenants.")
    oldest_age_s: float | None = Field(
        default=None, description="Seconds since the oldest waiting job (in RQ or pending) was enqueued; null: none."
    )
    running: int = Field(description="Attempts running from this queue, from ftjobs' own heartbeats (not RQ's).")
    workers: int = Field(description="RQ workers listening on this queue.")
    tenants: list[TenantBacklog] = Field(default_factory=list, description="The backlog per tenant.")


class TenantJobCounts(BaseModel):
    tenant: str
    counts: dict[str, int] = Field(
        description="Jobs per status from ftjobs' records (`running`, `failed`, ...), whatever RQ thinks."
    )


class QueueOverview(BaseModel):
    """`GET /v1/admin/queues`."""

    object: Literal["admin.queues"] = "admin.queues"
    queues: list[QueueInfo]
    jobs: list[TenantJobCounts] = Field(description="Every tenant's jobs by status (all queues).")


class WorkerHardware(BaseModel):
    """What a worker found at startup (recorded once; a worker probes it in a child process)."""

    cpu_count: int | None = None
    device: str | None = Field(default=None, description="`cuda`, `mps` or `cpu`: what torch would train on.")
    gpu_count: int = 0
    gpu_name: str | None = None
    gpu_memory_bytes: int | None = Field(default=None, description="Total memory of the first GPU.")
    torch_version: str | None = None


class WorkerInfo(BaseModel):
    name: str
    hostname: str | None = None
    pid: int | None = None
    queues: list[str]
    state: str = Field(description="RQ's worker state: `idle`, `busy`, `started`, `suspended`.")
    current_job: str | None = Field(default=None, description="The ftjobs job id it runs, if any.")
    current_attempt: int | None = None
    current_tenant: str | None = None
    current_rq_job: str | None = Field(default=None, description="RQ's id of what it runs (`<job id>-<attempt>`).")
    last_heartbeat_age_s: float | None = Field(default=None, description="Seconds since its last RQ heartbeat.")
    hardware: WorkerHardware | None = Field(default=None, description="Null until the worker's probe has finished.")


class WorkerOverview(BaseModel):
    """`GET /v1/admin/workers`."""

    object: Literal["admin.workers"] = "admin.workers"
    workers: list[WorkerInfo]
