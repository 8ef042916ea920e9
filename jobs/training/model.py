"""The model a job trains: the base (or its parent's) weights, the requested dropout, and the method applied."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from transformers import AutoConfig, set_seed

from ftjobs.jobs.data.inputs import load, load_model
from ftjobs.jobs.report import Reporter
from ftjobs.jobs.training import continuation, safeguards
from ftjobs.jobs.training.inputs import Inputs
from ftjobs.jobs.training.methods import apply_method, load_options, name_base, parameter_counts


@dataclass
class TrainableModel:
    """A model ready for the Trainer, and what the resolved record says about it."""

    model: Any  # a transformers model, wrapped by peft or carrying bottleneck adapters as the method says
    dropout: dict[str, float]  # the config attributes the requested dropout set
    trainable: int  # parameters the optimizer updates
    pad_id: int  # the tokenizer's padding id, also set on the model config


def build_model(inputs: Inputs, reporter: Reporter) -> TrainableModel:
    """Load the weights and apply the method. The seed fixes the fresh weights (classifier head, LoRA A matrices)."""
    request, hp, parent, tokenizer = inputs.request, inputs.hp, inputs.parent, inputs.tokenizer
    set_seed(hp.seed)
    dropout = safeguards.dropout_overrides(
        load(AutoConfig.from_pretrained, inputs.model_path), hp.hidden_dropout, hp.attention_dropout
    )
    full_parent = parent is not None and request.method.type == "full"  # full: the parent's model/ is the start
    model = load_model(
        parent.weights if parent and full_parent else inputs.model_path,
        request.task,
        inputs.data.labels,
        **dropout,
        **load_options(request.method, request.task),
    )
    if tokenizer.pad_token_id is None:  # decoder tokenizers often lack one; padding is masked anyway
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    model.config.pad_token_id = pad_id
    if parent and not full_parent:
        model = continuation.attach(model, request.method, parent)
    else:
        model = apply_method(model, request.method, request.task)
    # What the trackers log of the model (its config's _name_or_path) and peft's model card name: the model as
    # the tenant may see it. Set after the method, which may still read the folder (prompt tuning's text init);
    # peft keeps the folder in its own config for its checks, and jobs/outputs/artifacts.py names it on save.
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if inputs.model_name:
        base.config.name_or_path = base.name_or_path = inputs.model_name
        name_base(model, inputs.model_name)
    trainable, total = parameter_counts(model)
    reporter.event(
        f"{request.method.type}: training {trainable:,} of {total:,} parameters "
        f"({100 * trainable / max(total, 1):.2f}%)"
    )
    return TrainableModel(model, dropout, trainable, pad_id)
