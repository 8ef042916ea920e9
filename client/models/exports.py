"""Exports for serving (`POST /v1/jobs/{job_id}/exports`): a succeeded job's weights written in a format a serving
stack loads (a merged safetensors model, GGUF for llama.cpp/Ollama, an adapter folder for vLLM) by a worker."""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, Field, model_validator

from ftjobs.client.models.common import STRICT, ListObject
from ftjobs.client.models.jobs import Artifact

EXPORT_ID_PATTERN = r"^export-[0-9a-f]{20}$"
SERVED_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


class ExportFormat(StrEnum):
    safetensors = "safetensors"  # the adapter merged into the base: a complete transformers model
    gguf = "gguf"  # llama.cpp / Ollama: the merged model (+ the LoRA adapter as a GGUF adapter)
    vllm = "vllm"  # the LoRA adapter folder as `vllm serve --enable-lora --lora-modules` loads it


class ExportDtype(StrEnum):
    fp16 = "fp16"
    bf16 = "bf16"
    f32 = "f32"


class GGUFQuantization(StrEnum):
    f16 = "f16"
    q8_0 = "q8_0"


class ExportStatus(StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"


class ExportCreate(BaseModel):
    """Body of `POST /v1/jobs/{job_id}/exports`: the format to write the job's weights in."""

    model_config = STRICT
    format: ExportFormat = Field(
        description="`safetensors`: the adapter merged into the base model (transformers, TGI, vLLM load it); "
        "`gguf`: llama-architecture causal LMs for llama.cpp/Ollama (the merged model, plus a LoRA job's adapter as a "
        "GGUF adapter); `vllm`: a LoRA job's adapter folder and the `vllm serve --lora-modules` line."
    )
    dtype: ExportDtype | None = Field(
        default=None, description="safetensors only: the merged weights' dtype (default fp16)."
    )
    quantization: GGUFQuantization | None = Field(
        default=None, description="gguf only: the model's tensor type, `f16` or `q8_0` (default f16)."
    )
    name: str | None = Field(
        default=None,
        pattern=SERVED_NAME_PATTERN,
        description="vllm: the adapter's name in `--lora-modules name=path` (default: the job's suffix, or its id).",
    )

    @model_validator(mode="after")
    def _options_fit_the_format(self) -> ExportCreate:
        if self.dtype is not None and self.format != ExportFormat.safetensors:
            raise ValueError(f"dtype applies to the safetensors format only, not {self.format.value}")
        if self.quantization is not None and self.format != ExportFormat.gguf:
            raise ValueError(f"quantization applies to the gguf format only, not {self.format.value}")
        return self

    def resolved(self) -> ExportCreate:
        """The request with its defaults filled in (fp16 safetensors, f16 GGUF)."""
        fill: dict[str, Any] = {}
        if self.format == ExportFormat.safetensors and self.dtype is None:
            fill["dtype"] = ExportDtype.fp16
        if self.format == ExportFormat.gguf and self.quantization is None:
            fill["quantization"] = GGUFQuantization.f16
        return self.model_copy(update=fill)


class ExportError(BaseModel):
    """Why an export failed (its files were removed: a failed export leaves none)."""

    code: str = Field(description="e.g. `export_failed`, `check_failed`, `worker_lost`.")
    message: str


class ExportEvent(BaseModel):
    created_at: float
    level: Literal["info", "warning", "error"] = "info"
    message: str


class Export(BaseModel):
    """One export of a job's weights: its status, its files (downloadable) and what was checked after writing."""

    id: str
    object: Literal["fine_tuning.job.export"] = "fine_tuning.job.export"
    job_id: str
    status: ExportStatus
    format: ExportFormat
    dtype: ExportDtype | None = None
    quantization: GGUFQuantization | None = None
    name: str | None = None
    created_at: int
    started_at: int | None = None
    finished_at: int | None = None
    files: list[Artifact] = Field(
        default_factory=list,
        description="Once succeeded: every file (manifest.json last), at "
        "`/v1/jobs/{job_id}/exports/{id}/files/{name}`.",
    )
    checks: dict[str, Any] = Field(
        default_factory=dict, description="What was verified after writing (reloaded logits, GGUF re-read ...)."
    )
    error: ExportError | None = None
    events: list[ExportEvent] = Field(default_factory=list)


class ExportList(ListObject[Export]):
    """A job's exports, oldest first."""
