"""What one job runs on: how many training processes, GPUs per process, and which hardware class (queue)."""

from __future__ import annotations

from pydantic import BaseModel, Field

from ftjobs.client.models.common import STRICT


class Resources(BaseModel):
    """The processes and hardware a job trains on (docs/scaling.md)."""

    model_config = STRICT
    processes: int = Field(
        default=1,
        ge=1,
        le=64,
        description="Training processes on the worker's machine: more than 1 runs the job data-parallel (DDP, "
        "launched with torchrun; gloo on CPU, NCCL on GPU). `batch_size` is per process: the global batch is "
        "batch_size x processes x gradient_accumulation_steps. The worker's torch threads are shared among them.",
    )
    gpus_per_process: int | None = Field(
        default=None,
        ge=0,
        le=1,
        description="GPUs each process drives: 1 (processes must not exceed the worker's GPUs), 0 for CPU only; "
        "null: 1 when the worker has GPUs, else 0.",
    )
    hardware: str | None = Field(
        default=None,
        pattern=r"^[a-z0-9][a-z0-9_-]{0,31}$",
        description="Hardware class to train on (e.g. `cpu`, `gpu`): the deployment maps each class to a training "
        "queue (FTJOBS_HARDWARE_QUEUES) served by workers on that hardware; null: the default training queue.",
    )
