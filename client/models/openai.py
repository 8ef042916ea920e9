"""OpenAI's fine-tuning shapes: `/v1/fine_tuning/jobs` requests and the objects the official `openai` SDK parses.

The same jobs as `/v1/jobs`, in OpenAI's words: `service/openai_jobs.py` translates a `FineTuningJobCreate` into
a `JobCreate` and a `Job` back into a `FineTuningJob`. ftjobs' own options ride in extra body fields (the SDK's
`extra_body`): `peft` (the fine-tuning strategy, LoRA by default), `task`, `data`, `training`, `reference_file`,
`parent_job_id`, `group_field`, `priority`, `eval_generation_limit`, `eval_samples`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, field_validator

from ftjobs.client.models.common import FILE_ID_PATTERN, JOB_ID_PATTERN, STRICT, Page
from ftjobs.client.models.methods import Method
from ftjobs.client.models.training import DataOptions

Auto = Literal["auto"]


class OpenAIHyperparameters(BaseModel):
    """OpenAI's hyperparameters; `"auto"` is ftjobs' default (3 epochs, batch 8, the method's usual rate)."""

    model_config = STRICT
    n_epochs: int | Auto = Field(default="auto", description="Passes over the training data (1-100).")
    batch_size: int | Auto = Field(default="auto", description="Examples per step (1-1024).")
    learning_rate_multiplier: float | Auto = Field(
        default="auto", description="Scales the learning rate ftjobs picks for the method and task (>0, <=100)."
    )
    beta: float | Auto | None = Field(
        default=None, description="dpo only: weight of the KL penalty towards the reference model (>0, <=100)."
    )

    @field_validator("n_epochs")
    @classmethod
    def _epochs(cls, v: int | str) -> int | str:
        if isinstance(v, int) and not 1 <= v <= 100:
            raise ValueError("n_epochs must be between 1 and 100, or 'auto'")
        return v

    @field_validator("batch_size")
    @classmethod
    def _batch(cls, v: int | str) -> int | str:
        if isinstance(v, int) and not 1 <= v <= 1024:
            raise ValueError("batch_size must be between 1 and 1024, or 'auto'")
        return v

    @field_validator("learning_rate_multiplier", "beta")
    @classmethod
    def _positive(cls, v: float | str | None) -> float | str | None:
        if isinstance(v, float | int) and not 0 < v <= 100:
            raise ValueError("must be > 0 and <= 100, or 'auto'")
        return v


class MethodHyperparameters(BaseModel):
    model_config = STRICT
    hyperparameters: OpenAIHyperparameters = Field(default_factory=OpenAIHyperparameters)


class OpenAIMethod(BaseModel):
    """`{type: supervised | dpo, supervised | dpo: {hyperparameters: {...}}}`; `reinforcement` is refused."""

    model_config = STRICT
    type: str = Field(description="`supervised` or `dpo`.")
    supervised: MethodHyperparameters | None = None
    dpo: MethodHyperparameters | None = None
    reinforcement: dict[str, Any] | None = Field(default=None, description="Not supported: a 422 names it.")

    @field_validator("type")
    @classmethod
    def _supported(cls, v: str) -> str:
        if v not in ("supervised", "dpo"):
            raise ValueError(f"method type {v!r} is not supported by ftjobs; use 'supervised' or 'dpo'")
        return v


class Integration(BaseModel):
    """OpenAI's `{type: wandb, wandb: {project, ...}}`; ftjobs also takes `mlflow` and `tensorboard`."""

    model_config = STRICT
    type: Literal["wandb", "mlflow", "tensorboard"]
    wandb: dict[str, Any] | None = Field(
        default=None,
        description="Kept for the SDK's shape: ftjobs' W&B runs are offline (the `wandb.tar.gz` artifact).",
    )


class FineTuningJobCreate(BaseModel):
    """Body of `POST /v1/fine_tuning/jobs` (OpenAI's fields, then ftjobs' extras)."""

    model_config = STRICT
    model: str = Field(
        min_length=1,
        max_length=1024,
        description="A base model name (as `GET /v1/models` lists it), or a fine-tuned model `ft:...` to continue.",
    )
    training_file: str = Field(pattern=FILE_ID_PATTERN)
    validation_file: str | None = Field(default=None, pattern=FILE_ID_PATTERN)
    suffix: str | None = Field(default=None, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")
    seed: int | None = Field(default=None, ge=0, le=2**31 - 1, description="Default: 42.")
    metadata: dict[Annotated[str, Field(max_length=64)], Annotated[str, Field(max_length=512)]] | None = Field(
        default=None, max_length=16
    )
    method: OpenAIMethod | None = None
    hyperparameters: OpenAIHyperparameters | None = Field(
        default=None, description="The legacy form of method.supervised.hyperparameters (not both)."
    )
    integrations: list[Integration] | None = Field(default=None, max_length=3)
    # ftjobs' extras (extra_body)
    peft: Method | None = Field(default=None, description="ftjobs: the fine-tuning strategy (default LoRA).")
    task: str | None = Field(
        default=None, description="ftjobs: the task; by default inferred from the training file's format."
    )
    data: DataOptions | None = Field(default=None, description="ftjobs: data preparation.")
    training: dict[str, Any] | None = Field(
        default=None,
        description="ftjobs: any other Hyperparameters field (max_seq_length, warmup_ratio, safeguards such as "
        "ewc_lambda, early_stopping ...); not those OpenAI's fields set.",
    )
    reference_file: str | None = Field(default=None, pattern=FILE_ID_PATTERN)
    parent_job_id: str | None = Field(default=None, pattern=JOB_ID_PATTERN)
    group_field: str | None = Field(default=None, min_length=1, max_length=64)
    priority: int | None = Field(default=None, ge=-10, le=10)
    eval_generation_limit: int | None = Field(default=None, ge=0, le=10_000)
    eval_samples: int | None = Field(default=None, ge=0, le=100)


class FineTuningJobError(BaseModel):
    code: str
    message: str
    param: str | None = None


class FineTuningJobHyperparameters(BaseModel):
    n_epochs: int
    batch_size: int
    learning_rate_multiplier: float
    beta: float | None = None


class FineTuningJob(BaseModel):
    """A job as OpenAI's `fine_tuning.job`; the same id works on `/v1/jobs/{id}`."""

    id: str
    object: Literal["fine_tuning.job"] = "fine_tuning.job"
    created_at: int
    finished_at: int | None = None
    model: str
    fine_tuned_model: str | None = Field(default=None, description="`ft:<base>:<suffix>:<job id>` once succeeded.")
    organization_id: str = Field(description="The tenant.")
    status: str = Field(description="validating_files, queued, running, paused, succeeded, failed or cancelled.")
    hyperparameters: FineTuningJobHyperparameters
    method: dict[str, Any]
    result_files: list[str] = Field(description="Once succeeded: the id of a metrics CSV file (`/content`).")
    trained_tokens: int | None = None
    estimated_finish: int | None = None
    error: FineTuningJobError | None = None
    integrations: list[dict[str, Any]] | None = None
    metadata: dict[str, str] | None = None
    seed: int
    training_file: str
    validation_file: str | None = None


class FineTuningJobList(Page[FineTuningJob]):
    """A page of jobs, newest first."""


class FineTuningJobEvent(BaseModel):
    id: str = Field(description="`ftevent-<stream id>`: pass it as `after`.")
    object: Literal["fine_tuning.job.event"] = "fine_tuning.job.event"
    created_at: int
    level: Literal["info", "warn", "error"]
    message: str
    type: Literal["message", "metrics"]
    data: dict[str, Any] = Field(default_factory=dict)


class FineTuningJobEventList(Page[FineTuningJobEvent]):
    """A page of a job's events, newest first (OpenAI's order)."""


class CheckpointMetrics(BaseModel):
    step: float
    train_loss: float | None = None
    train_mean_token_accuracy: float | None = None
    valid_loss: float | None = None
    valid_mean_token_accuracy: float | None = None
    full_valid_loss: float | None = None
    full_valid_mean_token_accuracy: float | None = None


class FineTuningJobCheckpoint(BaseModel):
    id: str = Field(description="`ftckpt-<job hex>-<step>`.")
    object: Literal["fine_tuning.job.checkpoint"] = "fine_tuning.job.checkpoint"
    created_at: int
    fine_tuned_model_checkpoint: str = Field(description="`ft:<base>:<suffix>:<job id>:ckpt-step-<step>`.")
    step_number: int
    metrics: CheckpointMetrics
    fine_tuning_job_id: str
    download_url: str = Field(description="ftjobs: the weights file, from the job's artifacts.")
    artifacts_prefix: str = Field(description="ftjobs: the artifact folder of this checkpoint's weights.")


class FineTuningJobCheckpointList(Page[FineTuningJobCheckpoint]):
    """A job's checkpoints, newest first: the last epochs' weights, then the final model."""


class FileDeleted(BaseModel):
    id: str
    object: Literal["file"] = "file"
    deleted: bool = True


class ModelDeleted(BaseModel):
    id: str
    object: Literal["model"] = "model"
    deleted: bool = True
