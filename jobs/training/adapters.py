"""Bottleneck adapters (Houlsby et al. 2019; peft has none): a small residual MLP after a layer's output projection.

    y = base(x);  out = y + up(act(down(dropout(y))))      up starts at zero, so training starts from the base model

`add_bottleneck_adapters` wraps, in place, the output projection of every layer's attention and/or feed-forward
block (Llama `o_proj`/`down_proj`, BERT `attention.output.dense`/`output.dense`, GPT-2 `attn.c_proj`/`mlp.c_proj`,
...), freezes the base and leaves only the adapters (and a classification head, trained in full) trainable.
`save_bottleneck_adapter` writes `adapter_model.safetensors` (the trainable tensors) and `adapter_config.json`;
`load_bottleneck_adapter(base_model, dir)` rebuilds the same wrappers on a fresh base model and loads them.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh}
# Output projections of each transformer layer's sub-blocks, by position (module-name suffixes, as regexes).
TARGETS = {
    # Llama/Mistral/Qwen, BERT/RoBERTa, GPT-2, OPT/BART, DistilBERT, T5
    "attention": [r"\.o_proj$", r"\.attention\.output\.dense$", r"\.attn\.c_proj$", r"\.self_attn\.out_proj$",
                  r"\.attention\.out_lin$", r"\.(SelfAttention|EncDecAttention)\.o$"],
    "ffn": [r"\.down_proj$", r"\.layer\.\d+\.output\.dense$", r"\.mlp\.c_proj$", r"\.fc2$", r"\.ffn\.lin2$",
            r"\.DenseReluDense\.wo$"],
}


class BottleneckAdapter(nn.Module):
    """down -> activation -> up, added to its input; zero-initialised up-projection (identity at start)."""

    def __init__(self, hidden: int, bottleneck: int, non_linearity: str = "relu", dropout: float = 0.0) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.down = nn.Linear(hidden, bottleneck)
        self.act = ACTIVATIONS[non_linearity]()
        self.up = nn.Linear(bottleneck, hidden)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return y + self.up(self.act(self.down(self.dropout(y))))


class WithAdapter(nn.Module):
    """A frozen module followed by its adapter; `base` keeps the wrapped module's parameter names reachable."""

    def __init__(self, base: nn.Module, adapter: BottleneckAdapter) -> None:
        super().__init__()
        self.base = base
        self.adapter = adapter

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.adapter(self.base(*args, **kwargs))


def find_targets(model: nn.Module, positions: list[str]) -> list[str]:
    """Names of the modules to wrap: output projections of the requested sub-blocks, in model order."""
    patterns = [re.compile(p) for pos in positions for p in TARGETS[pos]]
    names = []
    for name, module in model.named_modules():
        if not isinstance(module, WithAdapter) and any(p.search(name) for p in patterns):
            names.append(name)
    return names


def _out_features(module: nn.Module) -> int:
    if isinstance(module, nn.Linear):
        return module.out_features
    weight = getattr(module, "weight", None)  # GPT-2's Conv1D stores (in, out)
    if weight is not None and type(module).__name__ == "Conv1D":
        return int(weight.shape[1])
    raise ValueError(f"cannot wrap {type(module).__name__}: not a Linear layer")


def add_bottleneck_adapters(
    model: nn.Module,
    *,
    positions: list[str],
    reduction_factor: int = 16,
    bottleneck_size: int | None = None,
    non_linearity: str = "relu",
    dropout: float = 0.0,
    train_modules: list[str] | tuple[str, ...] = (),
) -> dict[str, Any]:
    """Wrap the targets in place, freeze the rest except modules named in `train_modules`; returns the config."""
    targets = find_targets(model, positions)
    if not targets:
        raise ValueError(f"no {' or '.join(positions)} output projection found in {type(model).__name__}")
    sizes: dict[str, int] = {}
    for p in model.parameters():
        p.requires_grad_(False)
    for name in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        base = getattr(parent, child)
        hidden = _out_features(base)
        size = bottleneck_size or max(1, hidden // reduction_factor)
        sizes[name] = size
        adapter = BottleneckAdapter(hidden, size, non_linearity, dropout)
        ref = next(base.parameters())
        setattr(parent, child, WithAdapter(base, adapter.to(device=ref.device, dtype=ref.dtype)))
    trained_heads = set()
    for name, p in model.named_parameters():
        parts = name.split(".")
        if any(part in train_modules for part in parts):
            p.requires_grad_(True)
            trained_heads.add(next(part for part in parts if part in train_modules))
    return {
        "type": "bottleneck",
        "positions": list(positions),
        "targets": targets,
        "bottleneck_sizes": sizes,
        "reduction_factor": reduction_factor,
        "bottleneck_size": bottleneck_size,
        "non_linearity": non_linearity,
        "dropout": dropout,
        "modules_to_save": sorted(trained_heads),
        "base_model": getattr(getattr(model, "config", None), "_name_or_path", None),
        "model_class": type(model).__name__,
    }


def trainable_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The tensors the adapter method trains (adapters + head), contiguous and detached for safetensors."""
    return {name: p.detach().cpu().contiguous() for name, p in model.named_parameters() if p.requires_grad}


def save_bottleneck_adapter(model: nn.Module, directory: Path, config: dict[str, Any]) -> None:
    """adapter_model.safetensors + adapter_config.json under `directory`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_file(trainable_state_dict(model), str(directory / WEIGHTS_NAME), metadata={"format": "pt"})
    (directory / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def load_bottleneck_adapter(base_model: nn.Module, directory: Path | str) -> nn.Module:
    """Rebuild the adapters described in `directory` on `base_model` (in place), load their weights; eval mode."""
    directory = Path(directory)
    config = json.loads((directory / CONFIG_NAME).read_text())
    if config.get("type") != "bottleneck":
        raise ValueError(f"{directory / CONFIG_NAME} is not a bottleneck adapter config")
    add_bottleneck_adapters(
        base_model,
        positions=config["positions"],
        reduction_factor=config["reduction_factor"],
        bottleneck_size=config["bottleneck_size"],
        non_linearity=config["non_linearity"],
        dropout=config["dropout"],
        train_modules=config.get("modules_to_save") or (),
    )
    state = load_file(str(directory / WEIGHTS_NAME))
    missing = [n for n, p in base_model.named_parameters() if p.requires_grad and n not in state]
    if missing:
        raise ValueError(f"adapter weights missing for {missing[:5]}")
    unexpected = base_model.load_state_dict(state, strict=False).unexpected_keys
    if unexpected:
        raise ValueError(f"adapter weights for unknown parameters {unexpected[:5]}")
    base_model.eval()
    return base_model
