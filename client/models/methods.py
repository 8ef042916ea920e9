"""Fine-tuning methods (`JobCreate.method`): full, LoRA, IA3, prompt/prefix/p-tuning, bottleneck adapters."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field, field_validator

from ftjobs.client.models.common import STRICT

_MODULE_NAMES = list[Annotated[str, Field(min_length=1, max_length=128)]]


class _MethodBase(BaseModel):
    """What every method shares: `merge` (LoRA and IA3 only) also writes a merged full model under `model/`."""

    model_config = STRICT
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
METHOD_NAMES = {"lora": "LoRA", "ia3": "IA3", "adapter": "a bottleneck adapter"}
