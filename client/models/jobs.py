"""Fine-tuning jobs: the request (`JobCreate`), the record the API returns (`Job`), and the queue payload."""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from ftjobs.client.models.common import FILE_ID_PATTERN, JOB_ID_PATTERN, STRICT, TENANT_PATTERN, ListObject, Page
from ftjobs.client.models.files import FileFormat
from ftjobs.client.models.methods import METHOD_NAMES, PROMPT_METHODS, LoraMethod, Method
from ftjobs.client.models.resources import Resources, resources_conflict
from ftjobs.client.models.training import DataOptions, EvalGeneration, Hyperparameters


class JobStatus(StrEnum):
    """Lifecycle of a job (OpenAI's names): validating_files -> queued -> running -> terminal; `paused` (asked
    for) leaves any active status and goes back to `queued` on resume."""

    validating_files = "validating_files"
    queued = "queued"
    running = "running"
    paused = "paused"
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
    seq2seq = "seq2seq"  # an encoder-decoder (T5, BART) on source + target rows
    dpo = "dpo"  # preference fine-tuning (DPO) of a decoder on chosen/rejected pairs


# Which file formats each task can train on.
TASK_FORMATS: dict[Task, frozenset[FileFormat]] = {
    Task.causal_lm: frozenset({FileFormat.messages, FileFormat.prompt_completion, FileFormat.text}),
    Task.classification: frozenset({FileFormat.text_label}),
    Task.seq2seq: frozenset({FileFormat.source_target}),
    Task.dpo: frozenset({FileFormat.preference}),
}
# Which tasks a job may continue (parent_job_id): its own, and DPO after supervised fine-tuning (SFT then DPO).
PARENT_TASKS: dict[Task, frozenset[Task]] = {
    Task.causal_lm: frozenset({Task.causal_lm}),
    Task.classification: frozenset({Task.classification}),
    Task.seq2seq: frozenset({Task.seq2seq}),
    Task.dpo: frozenset({Task.dpo, Task.causal_lm}),
}
# What a reference_file of each task holds: what the model must not forget (a DPO job: its language modelling).
REFERENCE_FORMATS: dict[Task, frozenset[FileFormat]] = {**TASK_FORMATS, Task.dpo: TASK_FORMATS[Task.causal_lm]}
DPO_METHODS = frozenset({"lora", "full"})


class JobError(BaseModel):
    """Why a job failed."""

    code: str = Field(description="e.g. `model_not_found`, `invalid_data`, `out_of_memory`, `worker_lost`.")
    message: str
    param: str | None = None


class JobCreate(BaseModel):
    """Body of `POST /v1/jobs`."""

    model_config = STRICT
    model: str = Field(
        min_length=1,
        max_length=1024,
        description="Base model: a path under a configured model root (absolute, or relative to a root).",
    )
    task: Task = Field(default=Task.causal_lm, description="What to train the model for.")
    training_file: str = Field(pattern=FILE_ID_PATTERN, description="Id of an uploaded training file.")
    validation_file: str | None = Field(default=None, pattern=FILE_ID_PATTERN, description="Id of a validation file.")
    reference_file: str | None = Field(
        default=None,
        pattern=FILE_ID_PATTERN,
        description="Id of a file of what the model must not forget (same format as training_file): its loss is "
        "measured before and after training (results.forgetting); used by ewc_lambda and replay_ratio. A job "
        "with parent_job_id and no reference_file uses the parent's training file (up to 1,000 rows).",
    )
    group_field: str | None = Field(
        default=None,
        min_length=1,
        max_length=64,
        description="classification: a key of the validation rows (e.g. `group`); results.groups then holds "
        "accuracy and F1 per group, before and after training, and the gap between the best and worst group.",
    )
    method: Method = Field(default_factory=LoraMethod, description="Fine-tuning strategy.")
    parent_job_id: str | None = Field(
        default=None,
        pattern=JOB_ID_PATTERN,
        description="Continue training from this succeeded job's weights (same task and method type; `model` "
        "stays the base model). `method` fields left out are the parent's; those that shape the adapter (LoRA r, "
        "alpha, target_modules, use_dora; num_virtual_tokens; ...) must match it, the others (dropout, merge) may "
        "change. classification reuses the parent's labels.",
    )
    evaluate_only: bool = Field(
        default=False,
        description="Evaluate without training (`POST /v1/evaluations` makes such jobs): the base model, or "
        "parent_job_id's weights, on validation_file, with the metrics, samples and per-group breakdown of a "
        "training job's final evaluation (results.final); no weights are saved.",
    )
    checkpoint_step: int | None = Field(
        default=None,
        ge=1,
        description="evaluate_only with parent_job_id: the parent's weights kept at this step (an epoch's "
        "`checkpoints/step-<N>/` artifacts) instead of its final ones.",
    )
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)
    data: DataOptions = Field(
        default_factory=DataOptions, description="Cleaning, balancing and augmentation (reported in results.data)."
    )
    resources: Resources = Field(
        default_factory=Resources,
        description="Training processes per job (data-parallel), GPUs per process, and the hardware class (queue).",
    )
    suffix: str | None = Field(
        default=None, max_length=64, pattern=r"^[A-Za-z0-9._-]+$", description="Short name for the fine-tuned model."
    )
    priority: int = Field(
        default=0,
        ge=-10,
        le=10,
        description="Order among this tenant's own waiting jobs, for validation and training alike: higher goes "
        "first, equal priorities in submission order. It never moves a job ahead of another tenant's: tenants take "
        "turns (each has at most one job waiting per queue), whatever their priorities.",
    )
    eval_generation_limit: int = Field(
        default=64,
        ge=0,
        le=10_000,
        description="causal_lm/seq2seq: validation examples to generate for (greedy) before and after training, "
        "scored with BLEU, ROUGE and token accuracy; 0 skips generation.",
    )
    eval_samples: int = Field(
        default=8, ge=0, le=100, description="Validation examples saved with their predictions as eval_samples.jsonl."
    )
    eval_generation: EvalGeneration = Field(
        default_factory=EvalGeneration,
        description="causal_lm/seq2seq: how the generation evaluation decodes (batch size, new tokens, repetition "
        "controls); echoed as results.generation beside the scores it produced.",
    )
    integrations: list[Literal["tensorboard", "wandb", "mlflow"]] = Field(
        default_factory=list,
        max_length=3,
        description="Experiment trackers to log to besides TensorBoard, which logs every job (`tensorboard/` "
        "artifacts). `wandb`: an offline run, kept as the artifact `wandb.tar.gz` (`wandb sync` it). `mlflow`: the "
        "worker's MLFLOW_TRACKING_URI if it has one, else a file store kept as `mlruns.tar.gz`. The job fails with "
        "`integration_unavailable` if one is not installed in the worker.",
    )
    metadata: dict[Annotated[str, Field(max_length=64)], Annotated[str, Field(max_length=512)]] = Field(
        default_factory=dict, max_length=16, description="Free key/value pairs kept on the job."
    )

    @field_validator("checkpoint_step")
    @classmethod
    def _checkpoint_of_a_parent(cls, v: int | None, info: ValidationInfo) -> int | None:
        if v is not None and not (info.data.get("evaluate_only") and info.data.get("parent_job_id")):
            raise ValueError("checkpoint_step needs evaluate_only and a parent_job_id (whose checkpoint it is)")
        return v

    @field_validator("evaluate_only")
    @classmethod
    def _evaluation_data(cls, v: bool, info: ValidationInfo) -> bool:
        if v and not info.data.get("validation_file"):
            raise ValueError("evaluate_only evaluates on validation_file: give one")
        return v

    @field_validator("group_field")
    @classmethod
    def _group_field_for_classification(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v is not None and info.data.get("task") != Task.classification:
            raise ValueError("group_field is for task classification only")
        return v

    @field_validator("data")
    @classmethod
    def _data_options_for_task(cls, data: DataOptions, info: ValidationInfo) -> DataOptions:
        # task, group_field and hyperparameters are declared before data: info.data has them (when valid)
        classification = info.data.get("task") == Task.classification
        if data.drop_label_issues and not classification:
            raise ValueError("drop_label_issues is for task classification only")
        if data.debias != "none":
            if not classification or not info.data.get("group_field"):
                raise ValueError(f"debias {data.debias!r} needs task classification and a group_field")
            hp = info.data.get("hyperparameters")
            if hp is not None and hp.replay_ratio > 0:
                raise ValueError("debias weights training rows by their group: replay_ratio's reference rows have none")
        return data

    @field_validator("hyperparameters")
    @classmethod
    def _safeguards_have_their_data(cls, hp: Hyperparameters, info: ValidationInfo) -> Hyperparameters:
        # validation_file, reference_file and parent_job_id are declared before hyperparameters: info.data has them
        if hp.early_stopping is not None and not info.data.get("validation_file") and hp.validation_split == 0:
            raise ValueError("early_stopping needs validation data: give validation_file or validation_split > 0")
        if (hp.ewc_lambda > 0 or hp.replay_ratio > 0) and not (
            info.data.get("reference_file") or info.data.get("parent_job_id")
        ):
            raise ValueError("ewc_lambda and replay_ratio need a reference_file (or a parent_job_id: its data)")
        return hp

    @field_validator("hyperparameters")
    @classmethod
    def _dpo_settings(cls, hp: Hyperparameters, info: ValidationInfo) -> Hyperparameters:
        dpo = info.data.get("task") == Task.dpo
        if hp.beta != Hyperparameters.model_fields["beta"].default and not dpo:  # a stored record sets every field
            raise ValueError("beta is for task dpo only")
        if dpo and hp.replay_ratio > 0:
            raise ValueError("replay_ratio is not supported for task dpo: reference rows are not preference pairs")
        return hp

    @field_validator("hyperparameters")
    @classmethod
    def _batching_settings(cls, hp: Hyperparameters, info: ValidationInfo) -> Hyperparameters:
        task, method = info.data.get("task"), info.data.get("method")
        if hp.packing and task != Task.causal_lm:
            raise _nested("packing", hp.packing, f"packing is for task causal_lm only, not {task}")
        if hp.packing and method is not None and method.type in PROMPT_METHODS:
            raise _nested("packing", hp.packing, f"packing does not work with {method.type}: its virtual tokens "
                          "would sit in one example's positions only")  # fmt: skip
        if hp.group_by_length and hp.packing:
            raise _nested("group_by_length", True, "group_by_length is for unpacked data: packed rows are all full")
        if hp.group_by_length and task == Task.dpo:
            raise _nested("group_by_length", True, "group_by_length is not supported for task dpo")
        if hp.gradient_checkpointing and method is not None and method.type == "prefix_tuning":
            # transformers drops the attention cache in a checkpointed layer, and the prefixes live in it
            raise _nested("gradient_checkpointing", True, "gradient_checkpointing does not work with prefix_tuning")
        return hp

    @field_validator("method")
    @classmethod
    def _dpo_method(cls, method: Any, info: ValidationInfo) -> Any:
        if info.data.get("task") == Task.dpo and method.type not in DPO_METHODS:
            raise ValueError(f"task dpo trains with method lora or full, not {method.type!r}")
        return method

    @field_validator("resources")
    @classmethod
    def _resources_for_the_job(cls, resources: Resources, info: ValidationInfo) -> Resources:
        # task and method are declared before resources: info.data has them (when valid)
        if error := resources_conflict(resources, info.data.get("task"), info.data.get("method")):
            raise error
        return resources

    @field_validator("model")
    @classmethod
    def _model_path_shape(cls, v: str) -> str:
        if "\x00" in v or any(part == ".." for part in re.split(r"[\\/]", v)):
            raise ValueError("model must not contain '..' or NUL")
        return v


def _nested(field: str, value: Any, message: str) -> ValidationError:
    """A hyperparameters error located at its own field, so the 4xx names `hyperparameters.<field>`."""
    details = {"type": "value_error", "loc": (field,), "input": value, "ctx": {"error": ValueError(message)}}
    return ValidationError.from_exception_data("Hyperparameters", [details])  # type: ignore[list-item]


def resolve_hyperparameters(req: JobCreate) -> dict[str, Any]:
    """Fill every `"auto"` with its default; the worker adds what needs the data (steps)."""
    hp = req.hyperparameters.model_dump()
    if hp["learning_rate"] == "auto":
        if req.task == Task.dpo:
            hp["learning_rate"] = 1e-6 if req.method.type == "full" else 5e-6
        elif req.method.type == "full":
            hp["learning_rate"] = 5e-5
        elif req.method.type in PROMPT_METHODS:
            hp["learning_rate"] = 1e-2
        elif req.task == Task.classification:
            hp["learning_rate"] = 2e-3  # demo data: F1 0.96 after 2 epochs at 2e-3; mostly all-majority at 5e-4
        else:
            hp["learning_rate"] = 2e-4
    resources = getattr(req, "resources", None)
    processes = (getattr(resources, "processes", None) or 1) * (getattr(resources, "nodes", None) or 1)  # all ranks
    steps = req.hyperparameters.gradient_accumulation_steps
    hp["effective_batch_size"] = req.hyperparameters.batch_size * steps * processes  # examples (packed: rows) a step
    return hp


def auto_reasons(req: JobCreate) -> dict[str, str]:
    """Why each `"auto"` of the request resolved as it did (kept in `resolved_hyperparameters.auto_reasons`)."""
    reasons = {}
    if req.hyperparameters.learning_rate == "auto":
        lr = resolve_hyperparameters(req)["learning_rate"]
        if req.task == Task.dpo:
            why = "DPO moves a model that already answers well: TRL's small rates (1e-6 full, 5e-6 LoRA)"
        elif req.method.type == "full":
            why = "full fine-tuning moves every weight: a small rate keeps the pretrained model intact"
        elif req.method.type in PROMPT_METHODS:
            why = "virtual tokens start far from useful embeddings and are few: they need a large rate"
        elif req.task == Task.classification:
            name = METHOD_NAMES.get(req.method.type, req.method.type)
            why = f"{name} on classification also trains a fresh classifier head, which needs a larger rate"
        else:
            why = "the usual LoRA rate for language-model fine-tuning"
        reasons["learning_rate"] = f"{lr:g}: {why}"
    return reasons


class QueuePayload(BaseModel):
    """What crosses the queue (as JSON) for one attempt of one job; re-validated by the worker."""

    model_config = ConfigDict(extra="forbid")
    job_id: str = Field(pattern=JOB_ID_PATTERN)
    tenant: str = Field(pattern=TENANT_PATTERN)
    attempt: int = Field(ge=0, description="0: the file validation (jobs.validate.run); 1, 2 ...: training runs.")
    queue: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9._:-]{1,64}$",
        description="Validation only: the training queue the job goes to once its files pass.",
    )


class Progress(BaseModel):
    step: int = 0
    total_steps: int | None = None
    epoch: float = 0.0
    tokens_seen: int = 0
    elapsed_seconds: float = 0.0
    eta_seconds: float | None = Field(
        default=None, description="Seconds left: of training while `training`, of the current phase otherwise."
    )
    phase: Literal["training", "evaluating", "saving"] | None = Field(
        default=None, description="What the attempt does now; null before its first step."
    )
    phase_done: int | None = Field(default=None, description="Units of the current phase done (`phase_unit`).")
    phase_total: int | None = Field(default=None, description="Units the current phase has in all, where known.")
    phase_unit: str | None = Field(default=None, description="`batches`, `examples` or `bytes`.")


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
    reference_file: str | None = None
    group_field: str | None = None
    parent_job_id: str | None = None
    evaluate_only: bool = Field(default=False, description="An evaluation job: no training (results.final).")
    checkpoint_step: int | None = Field(default=None, description="evaluate_only: the parent's checkpoint evaluated.")
    hyperparameters: Hyperparameters = Field(description="As requested.")
    data: DataOptions = Field(default_factory=DataOptions, description="Data preparation, as requested.")
    resolved_hyperparameters: dict[str, Any] = Field(
        default_factory=dict, description="As resolved: every auto filled in, plus what the worker derived."
    )
    suffix: str | None = None
    metadata: dict[str, str] = Field(default_factory=dict)
    integrations: list[str] = Field(default_factory=list, description="Experiment trackers, as requested.")
    progress: Progress = Field(default_factory=Progress)
    last_metrics: dict[str, float] = Field(default_factory=dict)
    results: dict[str, Any] = Field(
        default_factory=dict,
        description="Summary at the end: `baseline` and `final` evaluation metrics, first/last train loss, "
        "`diagnostics` (overfitting/underfitting flags), `generation` (the eval_generation options behind "
        "bleu/rouge), and when they apply `early_stopping`, `pruned` (a sweep's trial that its pruner stopped: "
        "`sweep_id`, `metric`, `value`, `at_step`), `forgetting`, `confusion_matrix` and `groups`.",
    )
    attempt: int = Field(default=0, description="Current attempt number (1 for the first run).")
    cancel_requested: bool = False
    pause_requested: bool = Field(
        default=False, description="A pause was asked for: a running job checkpoints at its next step, then is paused."
    )
    error: JobError | None = None
    artifacts: list[Artifact] = Field(default_factory=list)


class JobList(Page[Job]):
    """A page of jobs (`GET /v1/jobs`)."""


class ArtifactList(ListObject[Artifact]):
    """Every artifact of a job (`GET /v1/jobs/{id}/artifacts`)."""
