"""The wire contract: every request and response body of the ftjobs API.

Imported by the client, the service and the worker alike; it depends on pydantic only.
"""

from __future__ import annotations

import math
import re
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

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
    seq2seq = "seq2seq"  # an encoder-decoder (T5, BART) on source + target rows


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
    Task.seq2seq: frozenset({FileFormat.source_target}),
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
    details: list[FileProblem] | None = Field(
        default=None, description="invalid_file only: the first problems of the file, each with line, field, code."
    )
    total: int | None = Field(default=None, description="invalid_file only: how many problems the file has in all.")


class FileProblem(BaseModel):
    """One problem of an uploaded file: where (line, field), what (a stable code) and why (message)."""

    line: int | None = Field(
        default=None, description="1-based line of the file as uploaded (the CSV's line; a Parquet file's row)."
    )
    field: str | None = Field(default=None, description="The row field at fault, e.g. `label`, `messages[1].role`.")
    code: str = Field(
        description="`invalid_json`, `invalid_utf8`, `not_an_object`, `unknown_shape`, `missing_field`, "
        "`invalid_type`, `empty_content`, `unknown_role`, `no_assistant_turn`, `label_missing`, "
        "`mixed_formats`, `line_too_long`, `invalid_csv`, `empty_file`."
    )
    message: str


class FileWarning(BaseModel):
    """A fixable issue found at upload: the file is accepted; `count` rows have it."""

    code: str = Field(
        description="`duplicate_row`, `label_whitespace`, `empty_optional_field`, `empty_message`, `single_label`."
    )
    field: str | None = None
    count: int
    lines: list[int] = Field(default_factory=list, description="The first few lines that have it.")
    message: str


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


_MODULE_NAMES = list[Annotated[str, Field(min_length=1, max_length=128)]]


class _MethodBase(BaseModel):
    """What every method shares: `merge` (LoRA and IA3 only) also writes a merged full model under `model/`."""

    model_config = _STRICT
    merge: bool = Field(
        default=False,
        description="LoRA and IA3 only: also write `model/`, the adapter merged into a full model "
        "(peft merge_and_unload), loadable without peft.",
    )

    @field_validator("merge")
    @classmethod
    def _merge_supported(cls, v: bool) -> bool:
        kind = cls.model_fields["type"].default  # a field validator of the concrete method class: its type tag
        if v and kind not in MERGEABLE_METHODS:
            raise ValueError(
                f"only {' and '.join(sorted(MERGEABLE_METHODS))} adapters can be merged into the base model, "
                f"not {kind!r}"
            )
        return v


MERGEABLE_METHODS = frozenset({"lora", "ia3"})


class LoraMethod(_MethodBase):
    """Low-rank adapters (peft LoRA, optionally DoRA or 4-bit QLoRA) on the projections; the base stays frozen."""

    type: Literal["lora"] = "lora"
    r: int = Field(default=8, ge=1, le=512, description="Rank of the update matrices.")
    alpha: int = Field(default=16, ge=1, le=4096, description="LoRA scaling numerator (scale = alpha / r).")
    dropout: float = Field(default=0.05, ge=0.0, le=0.9, description="Dropout on the LoRA input.")
    target_modules: _MODULE_NAMES | None = Field(
        default=None,
        max_length=64,
        description="Module names to adapt; null picks peft's default for the architecture.",
    )
    use_dora: bool = Field(
        default=False, description="Weight-decomposed LoRA (DoRA): learns a magnitude vector besides the update."
    )
    quantize: Literal["4bit"] | None = Field(
        default=None,
        description="`4bit`: QLoRA, the frozen base loaded in 4-bit NF4 (bf16 compute on CUDA, fp32 on CPU). Needs "
        "bitsandbytes on the worker (`ftjobs[qlora]`); elsewhere the job fails with code `unsupported_method`. "
        "With `merge`, the adapter is merged into the base loaded again in full precision.",
    )


class FullMethod(_MethodBase):
    """Full fine-tuning: every parameter is trained."""

    type: Literal["full"] = "full"


class IA3Method(_MethodBase):
    """(IA)^3: learned vectors that rescale keys, values and feed-forward activations; the base stays frozen."""

    type: Literal["ia3"] = "ia3"
    target_modules: _MODULE_NAMES | None = Field(
        default=None, max_length=64, description="Modules to rescale; null picks peft's default for the architecture."
    )
    feedforward_modules: _MODULE_NAMES | None = Field(
        default=None,
        max_length=64,
        description="Which of target_modules are feed-forward layers (scaled on their input); null: peft's default.",
    )


class PromptTuningMethod(_MethodBase):
    """Prompt tuning: trainable virtual-token embeddings prepended to the input; the model stays frozen."""

    type: Literal["prompt_tuning"] = "prompt_tuning"
    num_virtual_tokens: int = Field(default=20, ge=1, le=512, description="Number of virtual tokens.")
    init_text: str | None = Field(
        default=None,
        min_length=1,
        max_length=2000,
        description="Initialise the virtual tokens from this text's embeddings; null: random init.",
    )


class PrefixTuningMethod(_MethodBase):
    """Prefix tuning: trainable key/value prefixes in every attention layer; the model stays frozen."""

    type: Literal["prefix_tuning"] = "prefix_tuning"
    num_virtual_tokens: int = Field(default=20, ge=1, le=512, description="Number of virtual tokens per layer.")


class PTuningMethod(_MethodBase):
    """P-tuning: virtual-token embeddings produced by a small trainable MLP prompt encoder."""

    type: Literal["p_tuning"] = "p_tuning"
    num_virtual_tokens: int = Field(default=20, ge=1, le=512, description="Number of virtual tokens.")
    encoder_hidden_size: int = Field(default=128, ge=1, le=16384, description="Hidden size of the prompt encoder.")


class AdapterMethod(_MethodBase):
    """Bottleneck adapters (Houlsby/Pfeiffer): down-project, non-linearity, up-project, residual, after each layer's
    attention output and/or feed-forward output; the base stays frozen, a classification head trains in full."""

    type: Literal["adapter"] = "adapter"
    reduction_factor: int = Field(
        default=16, ge=1, le=4096, description="Bottleneck size = hidden size / reduction_factor (or bottleneck_size)."
    )
    bottleneck_size: int | None = Field(
        default=None, ge=1, le=65536, description="Bottleneck width; overrides reduction_factor when set."
    )
    non_linearity: Literal["relu", "gelu", "tanh"] = Field(default="relu", description="Activation in the bottleneck.")
    dropout: float = Field(default=0.0, ge=0.0, le=0.9, description="Dropout on the adapter input.")
    positions: list[Literal["attention", "ffn"]] = Field(
        default=["attention", "ffn"],
        min_length=1,
        max_length=2,
        description="Where to insert adapters: after the attention output and/or the feed-forward output.",
    )


Method = Annotated[
    LoraMethod | FullMethod | IA3Method | PromptTuningMethod | PrefixTuningMethod | PTuningMethod | AdapterMethod,
    Field(discriminator="type"),
]
PROMPT_METHODS = frozenset({"prompt_tuning", "prefix_tuning", "p_tuning"})
# What defines a trained adapter (its tensors' shapes, where it sits, how its output is scaled): a job continuing
# another (parent_job_id) keeps the parent's values. The other fields (dropout, merge, quantize) only affect training.
ADAPTER_SHAPE_FIELDS: dict[str, tuple[str, ...]] = {
    "full": (),
    "lora": ("r", "alpha", "target_modules", "use_dora"),
    "ia3": ("target_modules", "feedforward_modules"),
    "prompt_tuning": ("num_virtual_tokens", "init_text"),
    "prefix_tuning": ("num_virtual_tokens",),
    "p_tuning": ("num_virtual_tokens", "encoder_hidden_size"),
    "adapter": ("reduction_factor", "bottleneck_size", "non_linearity", "positions"),
}
_METHOD_NAMES = {"lora": "LoRA", "ia3": "IA3", "adapter": "a bottleneck adapter"}


class EarlyStopping(BaseModel):
    """Stop training when a validation metric has not improved for `patience` evaluations."""

    model_config = _STRICT
    metric: str = Field(
        default="eval_loss",
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9_/.-]+$",
        description="A validation metric the Trainer records: eval_loss (or loss, perplexity), or for "
        "classification accuracy, f1, precision, recall. Loss and perplexity: lower is better; others: higher.",
    )
    patience: int = Field(default=3, ge=1, le=1000, description="Evaluations without improvement before stopping.")
    min_delta: float = Field(default=0.0, ge=0.0, le=1e6, description="Smallest change that counts as improvement.")


class Hyperparameters(BaseModel):
    """Training hyperparameters; `"auto"` resolves to a default derived from the task and method."""

    model_config = _STRICT
    n_epochs: int = Field(default=3, ge=1, le=100, description="Passes over the training data.")
    batch_size: int = Field(default=8, ge=1, le=1024, description="Examples per optimisation step (per device).")
    learning_rate: float | Literal["auto"] = Field(
        default="auto",
        description="Peak learning rate; auto = 2e-4 (LoRA, causal_lm), 2e-3 (LoRA, classification), 5e-5 (full).",
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
    train_on_inputs: bool = Field(
        default=False,
        description="causal_lm: also compute the loss on prompts/user turns, not only on completions/assistant turns.",
    )
    validation_split: float = Field(
        default=0.1,
        ge=0.0,
        le=0.5,
        description="Held-out fraction (seeded, stratified for classification) when no validation_file is given.",
    )
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = Field(
        default="linear", description="Learning-rate schedule after warmup (constant ignores warmup_ratio)."
    )
    max_grad_norm: float = Field(
        default=1.0, ge=0.0, le=1000.0, description="Clip the gradient's global L2 norm to this; 0 disables clipping."
    )
    l1_lambda: float = Field(
        default=0.0, ge=0.0, le=10.0, description="L1 penalty on the trainable weights: loss += l1_lambda * sum |w|."
    )
    hidden_dropout: float | None = Field(
        default=None,
        ge=0.0,
        le=0.9,
        description="Override the model's hidden/residual dropout (e.g. hidden_dropout_prob); null keeps its own.",
    )
    attention_dropout: float | None = Field(
        default=None,
        ge=0.0,
        le=0.9,
        description="Override the model's attention dropout (attention_probs_dropout_prob, attention_dropout).",
    )
    early_stopping: EarlyStopping | None = Field(
        default=None,
        description="Stop when a validation metric stops improving and keep the best weights; needs validation data.",
    )
    ewc_lambda: float = Field(
        default=0.0,
        ge=0.0,
        le=1e8,
        description="Elastic weight consolidation on the reference data (reference_file, or else the parent job's "
        "training file): loss += ewc_lambda/2 * sum F (w - w0)^2, with F the diagonal Fisher of the reference loss "
        "at the start, normalised to mean 1 (try 0.1-10).",
    )
    replay_ratio: float = Field(
        default=0.0,
        ge=0.0,
        le=1.0,
        description="Mix reference rows (reference_file, or else the parent job's training file) into training: "
        "this many reference rows per training row (seeded).",
    )

    @field_validator("learning_rate")
    @classmethod
    def _learning_rate_range(cls, v: float | str) -> float | str:
        if isinstance(v, float | int) and not (0.0 < float(v) <= 1.0 and math.isfinite(float(v))):
            raise ValueError(f"learning_rate must be in (0, 1], got {v}")
        return v


DEDUP_THRESHOLD = 0.8  # dedup minhash: Jaccard similarity from which a row is a near duplicate


class DataOptions(BaseModel):
    """Data preparation before tokenization; the defaults change nothing. Each step is reported with rows in/out."""

    model_config = _STRICT
    normalize_text: bool = Field(default=False, description="Unicode NFKC and collapsed whitespace in text fields.")
    drop_invalid: bool = Field(
        default=False, description="Drop rows with missing or empty required fields instead of failing the job."
    )
    min_chars: int | None = Field(default=None, ge=0, le=10_000_000, description="Drop shorter rows (characters).")
    max_chars: int | None = Field(default=None, ge=1, le=10_000_000, description="Drop longer rows (characters).")
    dedup: Literal["none", "exact", "near", "minhash"] = Field(
        default="none",
        description="exact: identical rows; near: also rows equal after lowercasing and removing punctuation, "
        "digits and whitespace; minhash: exact and near, then also rows whose estimated Jaccard similarity to an "
        "earlier kept row (same label for classification) is at least dedup_threshold (MinHash LSH over "
        "character 5-grams of the lowercased words; the first occurrence is kept).",
    )
    dedup_threshold: float | None = Field(
        default=None,
        ge=0.5,
        le=1.0,
        description=f"dedup minhash only: the Jaccard similarity (0.5-1.0) from which a row counts as a near "
        f"duplicate; null = {DEDUP_THRESHOLD}. A one-word change in a ten-word text is about 0.75-0.85.",
    )
    normalize_labels: bool = Field(
        default=False, description="classification: merge labels that differ only in case/whitespace."
    )
    drop_conflicting: bool = Field(
        default=False, description="classification: drop every row whose text also occurs with another label."
    )
    balance: Literal["none", "oversample", "undersample", "class_weights"] = Field(
        default="none",
        description="classification: resample the training split to equal class counts, or weight the loss by "
        "inverse class frequency.",
    )
    augment: list[Literal["eda", "swap_terms", "paraphrase", "back_translate"]] = Field(
        default_factory=list,
        max_length=4,
        description="Seeded augmentation of the training split only: eda (random word swap/deletion/insertion), "
        "swap_terms (counterfactual copies with term pairs swapped, e.g. he/she), paraphrase (copies rewritten by "
        "the local model augment_model), back_translate (translated by augment_model, then back by "
        "augment_back_model).",
    )
    augment_copies: int = Field(default=1, ge=1, le=10, description="eda: augmented copies per training row.")
    augment_strength: float = Field(default=0.1, ge=0.0, le=0.5, description="eda: fraction of words changed.")
    term_pairs: list[tuple[str, str]] | None = Field(
        default=None, max_length=200, description="swap_terms: word pairs to swap; null = gendered English pairs."
    )
    augment_model: str | None = Field(
        default=None,
        min_length=1,
        max_length=1024,
        validate_default=True,
        description="paraphrase/back_translate: a causal or seq2seq model under a configured model root (like "
        "`model`); loaded on the CPU for this step only.",
    )
    augment_back_model: str | None = Field(
        default=None,
        min_length=1,
        max_length=1024,
        validate_default=True,
        description="back_translate: the model that translates augment_model's output back.",
    )
    augment_max_rows: int = Field(
        default=100, ge=1, le=10_000, description="paraphrase/back_translate: at most this many generated rows each."
    )
    augment_prompt: str = Field(
        default="Paraphrase: {text}\nParaphrase:",
        min_length=1,
        max_length=2000,
        pattern=r"\{text\}",
        description="paraphrase/back_translate, causal models: the prompt, {text} = the row's text (seq2seq models "
        "get the text itself). Only the first line of the continuation is kept.",
    )
    augment_temperature: float = Field(
        default=0.0, ge=0.0, le=2.0, description="paraphrase/back_translate: 0 = greedy, else seeded sampling."
    )

    @field_validator("dedup_threshold")
    @classmethod
    def _dedup_threshold_needs_minhash(cls, v: float | None, info: ValidationInfo) -> float | None:
        dedup = info.data.get("dedup", "minhash")  # absent: dedup itself was invalid and is reported
        if v is not None and dedup != "minhash":
            raise ValueError(f"dedup_threshold is for dedup minhash only, not {dedup!r}")
        return v

    @field_validator("augment_model", "augment_back_model")
    @classmethod
    def _augment_model_needed(cls, v: str | None, info: ValidationInfo) -> str | None:
        augment = info.data.get("augment") or []
        needs = {"paraphrase", "back_translate"} if info.field_name == "augment_model" else {"back_translate"}
        if v is None and needs & set(augment):
            raise ValueError(f"augment {' or '.join(sorted(needs & set(augment)))} needs {info.field_name}")
        return v

    @property
    def active(self) -> bool:
        return self != DataOptions()


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
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)
    data: DataOptions = Field(
        default_factory=DataOptions, description="Cleaning, balancing and augmentation (reported in results.data)."
    )
    suffix: str | None = Field(
        default=None, max_length=64, pattern=r"^[A-Za-z0-9._-]+$", description="Short name for the fine-tuned model."
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

    @field_validator("group_field")
    @classmethod
    def _group_field_for_classification(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v is not None and info.data.get("task") != Task.classification:
            raise ValueError("group_field is for task classification only")
        return v

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
        elif req.method.type in PROMPT_METHODS:
            hp["learning_rate"] = 1e-2
        elif req.task == Task.classification:
            hp["learning_rate"] = 2e-3  # demo data: F1 0.96 after 2 epochs at 2e-3; mostly all-majority at 5e-4
        else:
            hp["learning_rate"] = 2e-4
    return hp


def auto_reasons(req: JobCreate) -> dict[str, str]:
    """Why each `"auto"` of the request resolved as it did (kept in `resolved_hyperparameters.auto_reasons`)."""
    reasons = {}
    if req.hyperparameters.learning_rate == "auto":
        lr = resolve_hyperparameters(req)["learning_rate"]
        if req.method.type == "full":
            why = "full fine-tuning moves every weight: a small rate keeps the pretrained model intact"
        elif req.method.type in PROMPT_METHODS:
            why = "virtual tokens start far from useful embeddings and are few: they need a large rate"
        elif req.task == Task.classification:
            name = _METHOD_NAMES.get(req.method.type, req.method.type)
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


# --------------------------------------------------------------------------- response models


SourceFormat = Literal["jsonl", "csv", "parquet"]


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
    warning_details: list[FileWarning] = Field(
        default_factory=list, description="The same warnings, structured (code, field, count, first lines)."
    )
    source_format: SourceFormat = Field(
        default="jsonl", description="What was uploaded; CSV and Parquet are converted to JSONL rows."
    )


class LengthStats(BaseModel):
    """Length distribution of one field over the rows (characters or whitespace-separated words)."""

    min: int
    mean: float
    median: float
    p95: float
    max: int


class FieldProfile(BaseModel):
    name: str = Field(description="Row field; `messages` is the conversation's content, all turns together.")
    empty: int = Field(description="Rows where the field is empty or whitespace only.")
    missing: int = Field(default=0, description="Rows without the field.")
    chars: LengthStats | None = None
    words: LengthStats | None = None


class LabelCount(BaseModel):
    label: str
    count: int
    fraction: float


class TokenStats(BaseModel):
    """Token lengths of a file's training examples as one job tokenized them (after its data preparation)."""

    job_id: str
    model: str
    created_at: float
    examples: int
    min: int | None = None
    median: int | None = None
    p95: int | None = None
    max: int | None = None
    max_seq_length: int | None = None
    truncated: int | None = Field(default=None, description="Examples that reach max_seq_length (cut there).")
    histogram: dict[str, int] = Field(default_factory=dict, description="Power-of-two buckets: `<=64`: count.")


class FileProfile(BaseModel):
    """`GET /v1/files/{id}/profile`: what is in a dataset, computed while it streamed in."""

    object: Literal["file.profile"] = "file.profile"
    file_id: str
    rows: int
    format: FileFormat
    columns: list[str] = Field(description="Every top-level key seen in the rows.")
    fields: list[FieldProfile]
    labels: list[LabelCount] | None = Field(default=None, description="text_label files: most frequent first.")
    exact_duplicates: int = Field(description="Rows identical (same fields and values) to an earlier row.")
    duplicate_texts: int | None = Field(
        default=None, description="text_label files: rows whose text occurs earlier (any label)."
    )
    conflicting_labels: int | None = Field(
        default=None, description="text_label files: rows whose text occurs earlier with a different label."
    )
    notes: list[str] = Field(default_factory=list)
    tokens: list[TokenStats] = Field(
        default_factory=list,
        description="Token lengths computed by the validation of jobs training on this file, newest first "
        "(the last few jobs).",
    )


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
    reference_file: str | None = None
    group_field: str | None = None
    parent_job_id: str | None = None
    hyperparameters: Hyperparameters = Field(description="As requested.")
    data: DataOptions = Field(default_factory=DataOptions, description="Data preparation, as requested.")
    resolved_hyperparameters: dict[str, Any] = Field(
        default_factory=dict, description="As resolved: every auto filled in, plus what the worker derived."
    )
    suffix: str | None = None
    metadata: dict[str, str] = Field(default_factory=dict)
    progress: Progress = Field(default_factory=Progress)
    last_metrics: dict[str, float] = Field(default_factory=dict)
    results: dict[str, Any] = Field(
        default_factory=dict,
        description="Summary at the end: `baseline` and `final` evaluation metrics, first/last train loss, "
        "`diagnostics` (overfitting/underfitting flags), and when they apply `early_stopping`, `forgetting`, "
        "`confusion_matrix` and `groups`.",
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

