"""The wire contract: every request and response body of the ftjobs API.

Imported by the client, the service and the worker alike; it depends on pydantic only.
"""

from __future__ import annotations

import math
import re
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

# --------------------------------------------------------------------------- enums

DEFAULT_TENANT = "default"
TENANT_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"
JOB_ID_PATTERN = r"^ftjob-[0-9a-f]{20}$"
FILE_ID_PATTERN = r"^file-[0-9a-f]{20}$"


class JobStatus(StrEnum):
    """Lifecycle of a job (OpenAI's names): validating_files -> queued -> running -> terminal."""

    validating_files = "validating_files"
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset({JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled})


class Task(StrEnum):
    causal_lm = "causal_lm"  # SFT of a decoder on messages, prompt/completion or text rows
    classification = "classification"  # sequence classification on text + label rows


class FileFormat(StrEnum):
    """Row shape of an uploaded JSONL file, detected from the keys of its rows."""

    messages = "messages"  # {"messages": [{"role", "content"}, ...]}
    prompt_completion = "prompt_completion"  # {"prompt", "completion"}
    text = "text"  # {"text"}
    text_label = "text_label"  # {"text", "label"}
    source_target = "source_target"  # {"source", "target"}


# Which file formats each task can train on.
TASK_FORMATS: dict[Task, frozenset[FileFormat]] = {
    Task.causal_lm: frozenset({FileFormat.messages, FileFormat.prompt_completion, FileFormat.text}),
    Task.classification: frozenset({FileFormat.text_label}),
}


class EventLevel(StrEnum):
    info = "info"
    warning = "warning"
    error = "error"


class EventType(StrEnum):
    message = "message"
    metrics = "metrics"
    checkpoint = "checkpoint"
    status = "status"


# --------------------------------------------------------------------------- errors


class ErrorDetail(BaseModel):
    code: str = Field(description="Stable machine-readable code, e.g. `job_not_found`.")
    message: str = Field(description="Human-readable explanation; never a traceback.")
    param: str | None = Field(default=None, description="The request field or file line that is wrong.")
    type: str = Field(
        default="invalid_request_error",
        description="`invalid_request_error` (4xx), `api_error` (5xx) or `service_unavailable`.",
    )


class ErrorBody(BaseModel):
    """The one error body of every non-2xx response."""

    error: ErrorDetail


class JobError(BaseModel):
    """Why a job failed."""

    code: str = Field(description="e.g. `model_not_found`, `invalid_data`, `out_of_memory`, `worker_lost`.")
    message: str
    param: str | None = None


# --------------------------------------------------------------------------- request models

_STRICT = ConfigDict(extra="forbid", allow_inf_nan=False)


class LoraMethod(BaseModel):
    """Low-rank adapters (peft LoRA) on the attention/MLP projections; the base model stays frozen."""

    model_config = _STRICT
    type: Literal["lora"] = "lora"
    r: int = Field(default=8, ge=1, le=512, description="Rank of the update matrices.")
    alpha: int = Field(default=16, ge=1, le=4096, description="LoRA scaling numerator (scale = alpha / r).")
    dropout: float = Field(default=0.05, ge=0.0, le=0.9, description="Dropout on the LoRA input.")
    target_modules: list[Annotated[str, Field(min_length=1, max_length=128)]] | None = Field(
        default=None,
        max_length=64,
        description="Module names to adapt; null picks peft's default for the architecture.",
    )


class FullMethod(BaseModel):
    """Full fine-tuning: every parameter is trained."""

    model_config = _STRICT
    type: Literal["full"] = "full"


Method = Annotated[LoraMethod | FullMethod, Field(discriminator="type")]


class Hyperparameters(BaseModel):
    """Training hyperparameters; `"auto"` resolves to a default derived from the task and method."""

    model_config = _STRICT
    n_epochs: int = Field(default=3, ge=1, le=100, description="Passes over the training data.")
    batch_size: int = Field(default=8, ge=1, le=1024, description="Examples per optimisation step (per device).")
    learning_rate: float | Literal["auto"] = Field(
        default="auto",
        description="Peak learning rate; auto = 2e-4 (LoRA, causal_lm), 5e-4 (LoRA, classification), 5e-5 (full).",
    )
    max_seq_length: int = Field(
        default=256, ge=8, le=32768, description="Tokens per example; longer rows are truncated."
    )
    seed: int = Field(default=42, ge=0, le=2**31 - 1, description="Seeds data order, init and splitting.")
    weight_decay: float = Field(default=0.0, ge=0.0, le=1.0, description="Decoupled L2 weight decay (AdamW).")
    warmup_ratio: float = Field(default=0.0, ge=0.0, le=0.5, description="Fraction of steps for linear warmup.")
    gradient_accumulation_steps: int = Field(default=1, ge=1, le=1024, description="Micro-batches per step.")
    max_steps: int | None = Field(
        default=None, ge=1, le=10_000_000, description="Stop after this many steps (overrides n_epochs)."
    )
    eval_steps: int | None = Field(
        default=None, ge=1, le=10_000_000, description="Evaluate every N steps; null evaluates once per epoch."
    )
    validation_split: float = Field(
        default=0.1,
        ge=0.0,
        le=0.5,
        description="Held-out fraction (seeded, stratified for classification) when no validation_file is given.",
    )

    @field_validator("learning_rate")
    @classmethod
    def _learning_rate_range(cls, v: float | str) -> float | str:
        if isinstance(v, float | int) and not (0.0 < float(v) <= 1.0 and math.isfinite(float(v))):
            raise ValueError(f"learning_rate must be in (0, 1], got {v}")
        return v


class JobCreate(BaseModel):
    """Body of `POST /v1/jobs`."""

    model_config = _STRICT
    model: str = Field(
        min_length=1,
        max_length=1024,
        description="Base model: a path under a configured model root (absolute, or relative to a root).",
    )
    task: Task = Field(default=Task.causal_lm, description="What to train the model for.")
    training_file: str = Field(pattern=FILE_ID_PATTERN, description="Id of an uploaded training file.")
    validation_file: str | None = Field(default=None, pattern=FILE_ID_PATTERN, description="Id of a validation file.")
    method: Method = Field(default_factory=LoraMethod, description="Fine-tuning strategy.")
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)
    suffix: str | None = Field(
        default=None, max_length=64, pattern=r"^[A-Za-z0-9._-]+$", description="Short name for the fine-tuned model."
    )
    metadata: dict[Annotated[str, Field(max_length=64)], Annotated[str, Field(max_length=512)]] = Field(
        default_factory=dict, max_length=16, description="Free key/value pairs kept on the job."
    )

    @field_validator("model")
    @classmethod
    def _model_path_shape(cls, v: str) -> str:
        if "\x00" in v or any(part == ".." for part in re.split(r"[\\/]", v)):
            raise ValueError("model must not contain '..' or NUL")
        return v


def resolve_hyperparameters(req: JobCreate) -> dict[str, Any]:
    """Fill every `"auto"` with its default; the worker adds what needs the data (steps)."""
    hp = req.hyperparameters.model_dump()
    if hp["learning_rate"] == "auto":
        if req.method.type == "full":
            hp["learning_rate"] = 5e-5
        elif req.task == Task.classification:
            hp["learning_rate"] = 5e-4
        else:
            hp["learning_rate"] = 2e-4
    return hp


class QueuePayload(BaseModel):
    """What crosses the queue (as JSON) for one attempt of one job; re-validated by the worker."""

    model_config = ConfigDict(extra="forbid")
    job_id: str = Field(pattern=JOB_ID_PATTERN)
    tenant: str = Field(pattern=TENANT_PATTERN)
    attempt: int = Field(ge=1)


# --------------------------------------------------------------------------- response models


class FileObject(BaseModel):
    """An uploaded dataset."""

    id: str
    object: Literal["file"] = "file"
    tenant: str
    filename: str
    bytes: int
    rows: int = Field(description="Number of non-empty JSONL rows.")
    format: FileFormat = Field(description="Row shape detected from the keys of the rows.")
    sha256: str
    created_at: int = Field(description="Unix seconds.")
    purpose: Literal["fine-tune"] = "fine-tune"
    warnings: list[str] = Field(default_factory=list, description="Fixable problems found at upload.")


class FileList(BaseModel):
    object: Literal["list"] = "list"
    data: list[FileObject]
    has_more: bool
    last_id: str | None = None


class Progress(BaseModel):
    step: int = 0
    total_steps: int | None = None
    epoch: float = 0.0
    tokens_seen: int = 0
    elapsed_seconds: float = 0.0
    eta_seconds: float | None = None


class Artifact(BaseModel):
    """A finalised file produced by a job (downloadable)."""

    name: str = Field(description="Path inside the job's artifacts, e.g. `adapter/adapter_model.safetensors`.")
    bytes: int
    sha256: str
    created_at: int


class Job(BaseModel):
    """A fine-tuning job as the API returns it."""

    id: str
    object: Literal["fine_tuning.job"] = "fine_tuning.job"
    tenant: str
    status: JobStatus
    created_at: int
    started_at: int | None = None
    finished_at: int | None = None
    model: str
    task: Task
    method: Method
    training_file: str
    validation_file: str | None = None
    hyperparameters: Hyperparameters = Field(description="As requested.")
    resolved_hyperparameters: dict[str, Any] = Field(
        default_factory=dict, description="As resolved: every auto filled in, plus what the worker derived."
    )
    suffix: str | None = None
    metadata: dict[str, str] = Field(default_factory=dict)
    progress: Progress = Field(default_factory=Progress)
    last_metrics: dict[str, float] = Field(default_factory=dict)
    results: dict[str, Any] = Field(
        default_factory=dict,
        description="Summary at the end: `baseline` and `final` evaluation metrics, first/last train loss.",
    )
    attempt: int = Field(default=0, description="Current attempt number (1 for the first run).")
    cancel_requested: bool = False
    error: JobError | None = None
    artifacts: list[Artifact] = Field(default_factory=list)


class JobList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Job]
    has_more: bool
    last_id: str | None = None


class Event(BaseModel):
    """One entry of a job's event stream; `id` is the Redis Stream id (ordered, use it as `after`)."""

    id: str
    created_at: float
    level: EventLevel = EventLevel.info
    type: EventType = EventType.message
    message: str
    data: dict[str, Any] = Field(default_factory=dict)


class EventList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Event]
    has_more: bool
    last_id: str | None = None


class MetricPoint(BaseModel):
    """Metric values logged at one step; `split` is `train` or `eval`."""

    id: str
    step: int
    epoch: float | None = None
    split: Literal["train", "eval"]
    created_at: float
    values: dict[str, float]


class MetricList(BaseModel):
    object: Literal["list"] = "list"
    data: list[MetricPoint]
    has_more: bool
    last_id: str | None = None


class ArtifactList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Artifact]


class Health(BaseModel):
    status: Literal["ok", "unavailable"]
    redis: bool | None = None
    version: str

