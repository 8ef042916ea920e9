"""FSDP on a job's ranks (`resources.sharding: fsdp`, docs/scaling.md): the Trainer's arguments, turning accelerate's
FSDP on for CPU ranks (gloo) as for GPU ranks (NCCL), what each rank holds, and the full weights rank 0 saves."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from typing import Any

import torch

from ftjobs.jobs.training.distributed import ResourcesUnavailable, is_main, sharded


def sharding_arguments() -> dict[str, Any]:
    """The Trainer's FSDP arguments on an FSDP rank ({} otherwise): FSDP2 (accelerate's `fully_shard`), each
    decoder layer its own unit, parameters resharded after the forward, a full state dict for checkpoints."""
    if not sharded():
        return {}
    config = {"version": 2, "auto_wrap_policy": "TRANSFORMER_BASED_WRAP", "reshard_after_forward": True,
              "state_dict_type": "FULL_STATE_DICT"}  # fmt: skip
    return {"fsdp": True, "fsdp_config": config}


@contextlib.contextmanager
def sharding_on_cpu() -> Iterator[None]:
    """Around the Trainer's Accelerator creation on an FSDP rank without a GPU. accelerate 1.16 turns its FSDP
    plugin on only when its distributed type is an accelerator's (MULTI_GPU, ...), never MULTI_CPU, although
    torch's FSDP2 (`fully_shard`) runs on CPU over gloo; so the Accelerator is created while the state shared by
    accelerate says MULTI_GPU: it takes the plugin (its type becomes FSDP), and its device stays the CPU."""
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType

    shared = PartialState._shared_state
    if not sharded() or shared.get("distributed_type") != DistributedType.MULTI_CPU:
        yield
        return
    shared["distributed_type"] = DistributedType.MULTI_GPU
    try:
        yield
    finally:
        if shared.get("distributed_type") == DistributedType.MULTI_GPU:  # the Accelerator was not created
            shared["distributed_type"] = DistributedType.MULTI_CPU


def check_sharded(trainer: Any) -> None:
    """An FSDP rank whose Trainer did not turn FSDP on would train unsharded (DDP) without a word: fail instead."""
    if sharded() and not trainer.is_fsdp_enabled:
        raise ResourcesUnavailable(
            "sharding fsdp: this worker's accelerate did not enable FSDP; use sharding ddp",
            param="resources.sharding",
        )


def shard_share(model: torch.nn.Module) -> dict[str, Any]:
    """What this rank holds of the model's parameters under FSDP: its elements, the model's, the fraction."""
    from torch.distributed.tensor import DTensor

    local = total = 0
    for parameter in model.parameters():
        total += parameter.numel()
        local += parameter.to_local().numel() if isinstance(parameter, DTensor) else parameter.numel()
    return {"parameters_held": local, "parameters_total": total, "share": round(local / max(total, 1), 4)}


def gather_weights(trainer: Any) -> None:
    """On FSDP ranks, before rank 0 alone saves: every rank takes part in gathering the full state dict (a
    collective), and rank 0's model then saves that one (its own parameters are shards). A no-op under DDP."""
    if not sharded():
        return
    state = trainer.accelerator.get_state_dict(trainer.model)  # full, on CPU, on rank 0
    if is_main():
        model = trainer.accelerator.unwrap_model(trainer.model)
        model.save_pretrained = functools.partial(model.save_pretrained, state_dict=state)
