"""Memory preflight: will this job fit the worker's device? Estimated before any weight is loaded.

The model is built on torch's `meta` device from its config.json (shapes only, no memory, no weights read), so
parameter counts are exact for any architecture; the method is applied to that empty model to count what the
optimizer updates. Peak memory of a training step, in bytes:

    weights      every parameter, fp32 (QLoRA: the 4-bit linear layers at ~4.5 bits, the rest fp32)
    gradients    trainable parameters, fp32
    optimizer    AdamW's two moments per trainable parameter, fp32 (the Trainer's fused AdamW keeps no more)
    activations  what backward needs of one micro-batch: per layer ~(ACT_H x hidden + ACT_I x intermediate) values
                 per token plus the attention scores, all layers kept (gradient checkpointing: each layer's input
                 plus one layer's worth); a causal/seq2seq LM adds its logits (LOGIT_COPIES x batch x seq x vocab)
    dpo          chosen and rejected answers double the batch; full fine-tuning adds the frozen reference's weights
    ranks        a job on N processes is estimated per process: under FSDP (resources.sharding) gradients and
                 optimizer state are split N ways, and on a GPU the weights too (each rank loads the whole model
                 on its CPU first); on a CPU the N processes share the machine's memory, so each is held to 1/N
                 of it (on GPUs each has its own device)

The sum is what training adds to the process (its imports and data are already there); on a CPU it is compared
with the memory the system has available, on a GPU with the device's free memory. A job that needs more than
FIT_MARGIN times what is there fails at once with `insufficient_memory`, naming the part that dominates.
bench/preflight.py measures peak RSS of real runs against these figures.
"""

from __future__ import annotations

import contextlib
import io
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ftjobs.client.models import FullMethod, LoraMethod, Task
from ftjobs.jobs.errors import JobFailed
from ftjobs.jobs.training import distributed

log = logging.getLogger("ftjobs.preflight")

FP32 = 4  # bytes per value: weights, gradients, optimizer moments and activations (bf16 autocast: see below)
QLORA_BYTES = 4.5 / 8  # nf4 weights plus their per-block scales (blocks of 64), per quantized parameter
ACT_H, ACT_I = 12, 4  # activations a transformer layer keeps per token, in units of hidden / intermediate width
LOGIT_COPIES = 3  # logits, their float log-softmax and its gradient, each batch x seq x vocab
ATTN_COPIES = 2  # attention scores and probabilities kept for backward (eager/math attention)
FIT_MARGIN = 1.25  # fail only when the estimate exceeds what is there by this much: it is an estimate
GiB = 1024**3


class InsufficientMemory(JobFailed):
    """The job's estimated peak memory clearly exceeds what the worker's device has available."""

    code = "insufficient_memory"


@dataclass
class Shape:
    """What the estimate needs of a model, read from its config and an empty (meta) copy of it."""

    parameters: int
    trainable: int
    quantized: int  # parameters in 4-bit linear layers (QLoRA)
    layers: int
    hidden: int
    intermediate: int
    heads: int
    vocab: int


@dataclass
class Estimate:
    """Peak bytes a training step adds to the process, by part, and what the device has."""

    parts: dict[str, int]
    device: str  # "cpu" or "cuda"
    available: int | None  # bytes; None when unknown (no check)
    parameters: int
    trainable: int
    batch_size: int
    seq_len: int
    gradient_checkpointing: bool
    notes: list[str] = field(default_factory=list)
    processes: int = 1  # the job's ranks: the parts are one rank's
    sharded: bool = False  # FSDP: weights, gradients and optimizer state split across the ranks

    @property
    def total(self) -> int:
        return sum(self.parts.values())

    @property
    def fits(self) -> bool:
        return self.available is None or self.total <= self.available * FIT_MARGIN

    def as_json(self) -> dict[str, Any]:
        """The record's `resolved.memory_estimate`: bytes by part, the total and what the device had."""
        out = asdict(self)
        out["total"] = self.total
        return out

    def describe(self) -> str:
        """One line for the job's events."""
        parts = ", ".join(f"{k} {_size(v)}" for k, v in self.parts.items())
        have = f"{_size(self.available)} available" if self.available is not None else "availability unknown"
        ranks = ""
        if self.processes > 1:
            what = "gradients and optimizer" if self.device == "cpu" else "weights, gradients and optimizer"
            split = f", {what} split across them (FSDP)" if self.sharded else ""
            ranks = f" per process ({self.processes} processes{split})"
        return f"memory preflight: ~{_size(self.total)} peak{ranks} on {self.device} ({parts}); {have}"


def _size(n: int) -> str:
    """Bytes for people: MiB below a GiB."""
    return f"{n / GiB:.2f} GiB" if n >= GiB else f"{n / 1024**2:.1f} MiB"


# ----------------------------------------------------------------------------- the model's shape


def model_shape(model_path: Path, task: Task, n_labels: int | None, method: Any) -> Shape:
    """Parameter counts and widths from config.json, on the meta device: no weight is read or allocated."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoModelForSequenceClassification

    config = AutoConfig.from_pretrained(model_path)
    if task == Task.classification:
        config.num_labels = n_labels or 2
        auto: Any = AutoModelForSequenceClassification
    else:
        auto = AutoModelForSeq2SeqLM if task == Task.seq2seq else AutoModelForCausalLM
    with torch.device("meta"):
        model = auto.from_config(config)
    parameters = sum(p.numel() for p in model.parameters())
    quantized = 0
    if isinstance(method, LoraMethod) and method.quantize == "4bit":  # bitsandbytes quantizes Linear, not the head
        output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        quantized = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear) and m is not output)
    trainable = _trainable(model, method, task, parameters)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    hidden = int(_first(text, ("hidden_size", "d_model", "n_embd", "dim"), 768))
    return Shape(
        parameters=parameters,
        trainable=trainable,
        quantized=quantized,
        layers=int(_first(text, ("num_hidden_layers", "n_layer", "num_layers"), 12))
        + int(getattr(text, "num_decoder_layers", 0) or 0),
        hidden=hidden,
        intermediate=int(_first(text, ("intermediate_size", "d_ff", "n_inner", "ffn_dim"), 4 * hidden) or 4 * hidden),
        heads=int(_first(text, ("num_attention_heads", "n_head", "num_heads"), 12)),
        vocab=int(_first(text, ("vocab_size",), 32000)),
    )


def _first(config: Any, names: tuple[str, ...], default: int) -> int:
    for name in names:
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return default


def _trainable(model: Any, method: Any, task: Task, parameters: int) -> int:
    """Parameters the optimizer updates: the method applied to the empty model (peft works on meta tensors)."""
    if isinstance(method, FullMethod):
        return parameters
    from peft import get_peft_model

    from ftjobs.client.models import AdapterMethod
    from ftjobs.jobs.training.methods import apply_method, peft_config

    plain = method
    if isinstance(method, LoraMethod) and method.quantize:
        plain = method.model_copy(update={"quantize": None})  # same adapters, without bitsandbytes on meta
    if getattr(method, "init_text", None):
        plain = plain.model_copy(update={"init_text": None})  # text init reads the tokenizer: no shape change
    try:
        with torch.device("meta"), contextlib.redirect_stderr(io.StringIO()):  # peft's notes on an empty model
            if isinstance(plain, AdapterMethod):
                wrapped = apply_method(model, plain, task)
            else:  # peft directly: apply_method's probe runs a forward pass, which meta tensors cannot
                wrapped = get_peft_model(model, peft_config(plain, task, model))
        return sum(p.numel() for p in wrapped.parameters() if p.requires_grad)
    except Exception as e:  # a method the empty model cannot take: build_model will say why, with the weights
        log.info("preflight: trainable parameters not counted (%s); assuming 1%%", e)
        return max(1, parameters // 100)


# ----------------------------------------------------------------------------- the estimate


def estimate(
    shape: Shape, batch_size: int, seq_len: int, checkpointing: bool, task: Task, device: str
) -> dict[str, int]:
    """Peak bytes of one training step by part (see the module docstring)."""
    weights = (shape.parameters - shape.quantized) * FP32 + int(shape.quantized * QLORA_BYTES)
    if task == Task.dpo:  # each pair runs its chosen and rejected answers; full fine-tuning keeps a reference copy
        batch_size *= 2
        if shape.trainable >= shape.parameters:
            weights *= 2
    tokens = batch_size * seq_len
    per_layer = tokens * (ACT_H * shape.hidden + ACT_I * shape.intermediate) * FP32
    per_layer += ATTN_COPIES * batch_size * shape.heads * seq_len * seq_len * FP32
    if checkpointing:  # each layer's input is kept; one layer is recomputed at a time in backward
        activations = shape.layers * tokens * shape.hidden * FP32 + per_layer
    else:
        activations = shape.layers * per_layer
    if task != Task.classification:
        activations += LOGIT_COPIES * tokens * shape.vocab * FP32
    if device == "cuda":  # bf16 autocast: matmul outputs kept in 2 bytes (weights and optimizer stay fp32)
        activations = activations * 3 // 4
    return {
        "weights": weights,
        "gradients": shape.trainable * FP32,
        "optimizer": 2 * shape.trainable * FP32,
        "activations": activations,
    }


def shard(parts: dict[str, int], processes: int, device: str) -> dict[str, int]:
    """One FSDP rank's parts: its shard of the gradients and optimizer state (the layer it computes is gathered
    whole for a moment: not counted) and its own micro-batch's activations. Every rank loads the whole model on
    its CPU before sharding it (no cpu_ram_efficient_loading): on a GPU only the shard of the weights stays on the
    device, on a CPU the memory that held the whole weights stays with the process (bench/preflight.py)."""
    split = ("gradients", "optimizer") if device == "cpu" else ("weights", "gradients", "optimizer")
    return {k: -(-v // processes) if k in split else v for k, v in parts.items()}


def available_memory(device: str) -> int | None:
    """Bytes the job may still take: free GPU memory, or the system's MemAvailable (within a cgroup's limit)."""
    if device == "cuda":
        with contextlib.suppress(Exception):
            return int(torch.cuda.mem_get_info()[0])
        return None
    available = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) * 1024
    with contextlib.suppress(OSError, ValueError):  # a container's limit, less what it already uses
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text())
        if limit != "max":
            room = int(limit) - used
            available = room if available is None else min(available, room)
    return available


def preflight(
    model_path: Path,
    task: Task,
    n_labels: int | None,
    method: Any,
    hp: Any,
    seq_len: int,
    limit_bytes: int | None = None,
    batch_size: int | None = None,
    processes: int = 1,
    sharded: bool = False,
) -> Estimate:
    """The estimate for one of the job's `processes` on this worker; raises InsufficientMemory when it clearly does
    not fit."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    shape = model_shape(model_path, task, n_labels, method)
    quantized = isinstance(method, LoraMethod) and method.quantize == "4bit"
    # prepare_model_for_kbit_training (QLoRA) turns gradient checkpointing on itself
    checkpointing = bool(getattr(hp, "gradient_checkpointing", False)) or quantized
    batch = batch_size or hp.batch_size
    parts = estimate(shape, batch, seq_len, checkpointing, task, device)
    sharded = sharded and processes > 1
    if sharded:
        parts = shard(parts, processes, device)
    available = available_memory(device)
    if limit_bytes is not None:  # the deployment's budget for one job (FTJOBS_JOB_MEMORY_MB)
        available = limit_bytes if available is None else min(available, limit_bytes)
    if available is not None and device == "cpu":  # the job's ranks share the machine's memory
        available //= processes
    found = Estimate(parts, device, available, shape.parameters, shape.trainable, batch, seq_len, checkpointing,
                     processes=processes, sharded=sharded)  # fmt: skip
    if not found.fits:
        raise InsufficientMemory(_advice(found, method), param=_cause(found, method))
    return found


def _cause(found: Estimate, method: Any) -> str:
    """The request field behind the largest part: the model, the method, or the batch's shape."""
    biggest = max(found.parts, key=lambda k: found.parts[k])
    if biggest == "weights":
        return "model"
    if biggest in ("gradients", "optimizer"):
        return "method"
    return "hyperparameters.batch_size"


def _advice(found: Estimate, method: Any) -> str:
    cause = _cause(found, method)
    hint = {
        "model": "use a smaller model" + ("" if isinstance(method, LoraMethod) and method.quantize else " or QLoRA"),
        "method": "use LoRA instead of full fine-tuning",
        "hyperparameters.batch_size": "use a smaller batch_size or max_seq_length, or gradient_checkpointing",
    }[cause]
    have = found.available or 0
    return (
        f"the job needs about {_size(found.total)} of {found.device} memory "
        f"({', '.join(f'{k} {_size(v)}' for k, v in found.parts.items())}) and the worker has "
        f"{_size(have)} available; {hint}"
    )


def check(inputs: Any, reporter: Any, limit_mb: int | None) -> Estimate | None:
    """Before the weights load: estimate, say so (an event, `resolved.memory_estimate`), fail if it cannot fit."""
    request, hp = inputs.request, inputs.hp
    limit = limit_mb * 1024 * 1024 if limit_mb else None
    try:
        # packed rows are max_seq_length long; dpo's examples are text until TRL tokenizes them
        whole = getattr(hp, "packing", False) or request.task == Task.dpo
        seq_len = hp.max_seq_length if whole else min(_longest(inputs.data.train), hp.max_seq_length)
        n_labels = len(inputs.data.labels or []) or None
        batch = min(hp.batch_size, len(inputs.data.train))  # a batch holds at most every training example
        ranks = distributed.world_size()  # this rank's job runs on as many: each rank checks its own share
        found = preflight(inputs.model_path, request.task, n_labels, request.method, hp, seq_len, limit, batch,
                          processes=ranks, sharded=distributed.sharded())  # fmt: skip
    except InsufficientMemory:
        raise
    except Exception as e:  # an architecture the estimate cannot read: loading says what is wrong, if anything
        log.warning("memory preflight skipped: %s", e)
        return None
    reporter.event(found.describe())
    reporter.resolved({"memory_estimate": found.as_json()})
    return found


def _longest(dataset: Any) -> int:
    """The longest example in tokens (its prompt or, for seq2seq, its target): padding makes the batch as long."""
    longest = 1
    for example in getattr(dataset, "examples", ()):
        for key in ("input_ids", "labels"):
            if isinstance(value := example.get(key), list):
                longest = max(longest, len(value))
    return longest
