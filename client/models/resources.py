"""What one job runs on: how many training processes, GPUs per process, and which hardware class (queue)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError

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
    nodes: int = Field(
        default=1,
        ge=1,
        le=16,
        description="Machines (workers of the job's training queue) the job trains on at once, `processes` on each: "
        "more than 1 starts torchrun on every node with a c10d rendezvous at the worker that took the job, and "
        "trains on nodes x processes ranks (DDP); the global batch is batch_size x processes x nodes x "
        "gradient_accumulation_steps.",
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
    sharding: Literal["ddp", "fsdp"] = Field(
        default="ddp",
        description="How the processes share the model: `ddp` (each holds a full copy) or `fsdp` (parameters, "
        "gradients and optimizer state sharded across the processes, for full fine-tuning of a model that does "
        "not fit on one GPU or one process's memory; method full only, processes > 1; NCCL on GPUs, gloo on CPU).",
    )


# Tasks and options tried on several processes (docs/scaling.md); the others are refused with processes > 1.
DISTRIBUTED_TASKS = frozenset({"causal_lm", "classification", "dpo", "seq2seq"})

SHARDED_TASKS = frozenset({"causal_lm"})  # tasks run under FSDP (tests/jobs/test_fsdp.py)


def resources_conflict(resources: Resources, task: Any, method: Any) -> ValidationError | None:
    """What a job's other fields rule out on several processes: an error located at `resources.<field>`, or None.
    task and method as the request holds them (None when they are invalid themselves)."""
    if resources.sharding == "fsdp":
        if method is not None and method.type != "full":
            return _error("sharding", "fsdp shards full fine-tuning only: use method full, or sharding ddp for "
                          f"{method.type}")  # fmt: skip
        if resources.processes < 2:
            return _error("sharding", "fsdp shards the model across processes: set processes to 2 or more")
        if task is not None and str(getattr(task, "value", task)) not in SHARDED_TASKS:
            return _error("sharding", f"fsdp is for task {', '.join(sorted(SHARDED_TASKS))}: use sharding ddp for "
                          f"{getattr(task, 'value', task)}")  # fmt: skip
    if resources.nodes > 1:
        if task is not None and str(getattr(task, "value", task)) not in DISTRIBUTED_TASKS:
            return _error("nodes", f"task {getattr(task, 'value', task)} trains on one process only: "
                          f"nodes > 1 is for tasks {', '.join(sorted(DISTRIBUTED_TASKS))}")  # fmt: skip
        if resources.sharding == "fsdp":
            return _error("nodes", "fsdp was run on one node only: use nodes 1, or sharding ddp across nodes")
    if resources.processes > 1:
        if task is not None and str(getattr(task, "value", task)) not in DISTRIBUTED_TASKS:
            return _error("processes", f"task {getattr(task, 'value', task)} trains on one process only: "
                          f"processes > 1 is for tasks {', '.join(sorted(DISTRIBUTED_TASKS))}")  # fmt: skip
    return None


def _error(field: str, message: str) -> ValidationError:
    """Located at its own field, so the 4xx names `resources.<field>`."""
    details = {"type": "value_error", "loc": (field,), "input": None, "ctx": {"error": ValueError(message)}}
    return ValidationError.from_exception_data("Resources", [details])  # type: ignore[list-item]
