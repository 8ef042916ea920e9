"""Fine-tuning methods: `full` trains every weight; `lora` wraps the model with peft adapters."""

from __future__ import annotations

from typing import Any

from peft import LoraConfig, TaskType, get_peft_model

from client.models import FullMethod, LoraMethod, Task
from jobs.errors import InvalidMethod

# A classification head is fresh (or re-purposed) and small, so LoRA trains it in full and saves it with the
# adapter: the classifier, plus what feeds it where the architecture has one (BERT's pooler, DistilBERT's
# pre_classifier; decoders call their head `score`). Names a model lacks are ignored.
CLASSIFICATION_HEAD = ["classifier", "score", "pooler", "pre_classifier"]


def peft_config(method: LoraMethod, task: Task) -> LoraConfig:
    """The peft config for a LoRA request; target_modules=None lets peft pick the architecture's default."""
    return LoraConfig(
        r=method.r,
        lora_alpha=method.alpha,
        lora_dropout=method.dropout,
        target_modules=method.target_modules,
        task_type=TaskType.SEQ_CLS if task == Task.classification else TaskType.CAUSAL_LM,
        modules_to_save=CLASSIFICATION_HEAD if task == Task.classification else None,
    )


def apply_method(model: Any, method: LoraMethod | FullMethod, task: Task) -> Any:
    """The model to train: a PeftModel for LoRA, the model itself for full fine-tuning."""
    if isinstance(method, LoraMethod):
        try:
            return get_peft_model(model, peft_config(method, task))
        except ValueError as e:  # e.g. "Target modules {...} not found in the base model"
            raise InvalidMethod(str(e)[:500], param="method.target_modules") from None
    return model


def parameter_counts(model: Any) -> tuple[int, int]:
    """(trainable, total) parameters."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total
