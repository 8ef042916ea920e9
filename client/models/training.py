"""How a job trains (`Hyperparameters`) and how its data is prepared first (`DataOptions`)."""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, Field, ValidationInfo, field_validator

from ftjobs.client.models.common import STRICT


class EarlyStopping(BaseModel):
    """Stop training when a validation metric has not improved for `patience` evaluations."""

    model_config = STRICT
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

    model_config = STRICT
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
        default=None,
        ge=1,
        le=10_000_000,
        description="Evaluate every N steps; null: about 12 evaluations a run, at most 4 an epoch (a run of many "
        "epochs: once an epoch); resolved_hyperparameters.eval_steps says which.",
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

    beta: float = Field(
        default=0.1,
        gt=0.0,
        le=100.0,
        description="task dpo only: the DPO temperature (TRL's beta): how far the trained model may move from the "
        "reference; higher keeps it closer.",
    )
    packing: bool = Field(
        default=False,
        description="causal_lm: pack training examples into rows of max_seq_length (best-fit decreasing), each "
        "example attending only to itself (position_ids restart per example); batch_size then counts rows. "
        "Prompt tokens stay masked; evaluation is not packed.",
    )
    group_by_length: bool = Field(
        default=False,
        description="Batch training examples of similar length together (randomly within mega-batches): less "
        "padding, a cheaper alternative to packing.",
    )
    gradient_checkpointing: bool = Field(
        default=False,
        description="Recompute activations in the backward pass instead of keeping them: less memory, ~30% slower.",
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

    model_config = STRICT
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
    drop_label_issues: bool = Field(
        default=False,
        description="classification: drop the training split's rows most likely mislabeled (cleanlab's confident "
        "learning over 5-fold TF-IDF + logistic regression probabilities) before training.",
    )
    debias: Literal["none", "group_balance", "group_dro"] = Field(
        default="none",
        description="classification with group_field: group_balance weights each training row's loss by the "
        "inverse frequency of its group; group_dro minimises the worst group's loss with online group weights "
        "(Sagawa et al. 2020: exponentiated-gradient steps of group_dro_step_size on per-group losses). "
        "results.groups.change reports the worst-group metrics and the gap before vs after.",
    )
    group_dro_step_size: float = Field(
        default=0.01,
        gt=0.0,
        le=10.0,
        description="debias group_dro: the step size of the group weights' update q_g *= exp(step * loss_g).",
    )

    @field_validator("dedup_threshold")
    @classmethod
    def _dedup_threshold_needs_minhash(cls, v: float | None, info: ValidationInfo) -> float | None:
        dedup = info.data.get("dedup", "minhash")  # absent: dedup itself was invalid and is reported
        if v is not None and dedup != "minhash":
            raise ValueError(f"dedup_threshold is for dedup minhash only, not {dedup!r}")
        return v

    @field_validator("group_dro_step_size")
    @classmethod
    def _step_size_needs_dro(cls, v: float, info: ValidationInfo) -> float:
        debias = info.data.get("debias", "group_dro")  # absent: debias itself was invalid and is reported
        if v != DataOptions.model_fields["group_dro_step_size"].default and debias != "group_dro":
            raise ValueError(f"group_dro_step_size is for debias group_dro only, not {debias!r}")
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


class EvalGeneration(BaseModel):
    """How the generation evaluation (causal_lm/seq2seq, before and after training) decodes: greedy, in batches."""

    model_config = STRICT
    batch_size: int = Field(
        default=16,
        ge=1,
        le=256,
        description="Validation examples generated together (sorted by prompt length, padded); 1 = one at a time. "
        "Greedy outputs do not depend on it; memory and speed do.",
    )
    max_new_tokens: int = Field(
        default=256,
        ge=1,
        le=4096,
        description="Most tokens generated per example; each example also stops 4 tokens past its reference's "
        "length, and a causal_lm example at max_seq_length.",
    )
    repetition_penalty: float = Field(
        default=1.0,
        ge=1.0,
        le=10.0,
        description="Lowers the score of every token already generated (causal_lm: or in the prompt), CTRL's penalty; "
        "1 = none. 1.1-1.3 curbs greedy loops such as `été été été`.",
    )
    no_repeat_ngram_size: int = Field(
        default=0,
        ge=0,
        le=20,
        description="Never repeat an n-gram of this many tokens within one output (causal_lm: the prompt counts too); "
        "0 = off.",
    )
