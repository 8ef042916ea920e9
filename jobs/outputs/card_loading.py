"""The model card's "How to load": a Python snippet for the job's method (peft adapter, full model, bottleneck)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

AUTO_CLASSES = {  # the transformers class that loads the base model of each task
    "classification": "AutoModelForSequenceClassification",
    "causal_lm": "AutoModelForCausalLM",
    "seq2seq": "AutoModelForSeq2SeqLM",
    "dpo": "AutoModelForCausalLM",
}


def weights_folders(method: dict[str, Any]) -> list[str]:
    """The folders the job's weights are saved in (jobs/training/methods.save_weights)."""
    kind = method.get("type")
    if kind == "full":
        return ["model"]
    return ["adapter", "model"] if method.get("merge") else ["adapter"]


def loading_snippet(task: str, method: dict[str, Any], base: str, labels: Sequence[str] | None) -> str:
    """Markdown: how to load the job's weights, in the folder the artifacts were downloaded to."""
    auto, kind = AUTO_CLASSES.get(task, "AutoModelForCausalLM"), method.get("type")
    classes = bool(labels) and task == "classification"
    imports = [f"from transformers import {auto}, AutoTokenizer"]
    body = ['labels = json.load(open("labels.json"))  # {"0": label, ...}'] if classes else []
    base_args = f'"{base}"'
    if classes:  # the head's size and names
        names = "{int(i): name for i, name in labels.items()}"
        base_args = f'\n    "{base}",\n    num_labels=len(labels),\n    id2label={names},\n'
    if kind == "full" or method.get("merge"):
        where = "model"
        body.append(f'model = {auto}.from_pretrained("model").eval()')
        said = "`model/` is a complete model (transformers only, no peft):"
        if method.get("merge"):
            said = (
                "`model/` is the adapter merged into the base model (transformers only, no peft); `adapter/` "
                "also loads with peft's `PeftModel.from_pretrained` on the base:"
            )
    elif kind == "adapter":
        where = "adapter"
        imports.insert(0, "from ftjobs.jobs.training.adapters import load_bottleneck_adapter")
        body += [
            f"base = {auto}.from_pretrained({base_args})",
            'model = load_bottleneck_adapter(base, "adapter")  # adds the bottleneck layers, loads their weights',
        ]
        said = f"`adapter/` holds bottleneck adapters, which ftjobs' loader adds to the base model `{base}`:"
    else:
        where = "adapter"
        imports.insert(0, "from peft import PeftModel")
        body += [
            f"base = {auto}.from_pretrained({base_args})",
            'model = PeftModel.from_pretrained(base, "adapter").eval()',
        ]
        said = (
            f"`adapter/` is a peft {kind} adapter on the base model `{base}` (its name on the server: load your "
            "own copy of it):"
        )
    body.append(f'tokenizer = AutoTokenizer.from_pretrained("{where}")')
    code = [*(["import json", ""] if classes else []), *imports, "", *body, *_use(task)]
    return "\n".join([said, "", "```python", *code, "```"])


def _use(task: str) -> list[str]:
    """A first call of the loaded model."""
    if task == "classification":
        return [
            "",
            'inputs = tokenizer(["your text"], return_tensors="pt", truncation=True)',
            "print(labels[str(model(**inputs).logits.argmax(-1).item())])",
        ]
    return [
        "",
        'inputs = tokenizer("your prompt", return_tensors="pt")',
        "output = model.generate(**inputs, max_new_tokens=64)",
        "print(tokenizer.decode(output[0], skip_special_tokens=True))",
    ]
