"""A finished job's weights for an export: fetched from the store, loaded on the base model (peft adapter) or as the
job's full model, merged (peft merge_and_unload, in fp32), and the checks that compare what was written with them.

The reference of every check is the job's model as it trained it: the base plus the unmerged adapter, in fp32,
on a few fixed prompts. A written model is reloaded and its logits compared with that reference within the
tolerance of the dtype it was written in (relative to the reference's largest logit)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ftjobs.core.keys import artifact_path
from ftjobs.core.storage import Storage

PROMPTS = ("the quick brown fox", "what is the colour of the sky ?", "say hello .", "one two three")
# max |logit - reference| / max |reference| a reloaded model may differ by: the rounding of its weights' dtype (a
# real model, SmolLM2-135M, read back from q8_0 GGUF: 0.036; the tiny test llama: fp16 0.001, q8_0 0.03)
TOLERANCE = {"f32": 1e-4, "fp16": 2e-2, "bf16": 8e-2, "f16": 2e-2, "q8_0": 1e-1}
AUTO_CLASSES = {"classification": "AutoModelForSequenceClassification", "seq2seq": "AutoModelForSeq2SeqLM"}


@dataclass
class Weights:
    """The job's weights as downloaded: `adapter/` (peft) or `model/` (full), labels for classification."""

    folder: Path
    kind: str  # "adapter" or "model"
    labels: list[str] | None


class CheckFailed(ValueError):
    """What was written does not reload to the job's model within tolerance."""


def fetch_weights(store: Storage, tenant: str, job_id: str, method: str, work: Path) -> Weights:
    """Download the job's adapter/ (peft methods) or model/ (full) and labels.json into `work/job`."""
    manifest = json.loads(store.open(artifact_path(tenant, job_id, "manifest.json")).read())
    kind = "model" if method == "full" else "adapter"
    names = [
        f["name"] for f in manifest.get("files", []) if f["name"].startswith(f"{kind}/") or f["name"] == "labels.json"
    ]
    if not any(n.startswith(f"{kind}/") for n in names):
        raise FileNotFoundError(f"job {job_id} has no {kind}/ artifacts")
    for name in names:
        store.download(artifact_path(tenant, job_id, name), work / "job" / name)
    labels_file = work / "job" / "labels.json"
    labels = None
    if labels_file.is_file():
        by_index = json.loads(labels_file.read_text(encoding="utf-8"))
        labels = [by_index[str(i)] for i in range(len(by_index))]
    return Weights(work / "job" / kind, kind, labels)


def auto_class(task: str) -> Any:
    import transformers

    return getattr(transformers, AUTO_CLASSES.get(task, "AutoModelForCausalLM"))


def load_job_model(task: str, base: Path, weights: Weights) -> tuple[Any, Any]:
    """(model, tokenizer): the job's model in fp32 on the CPU as it trained it (a peft model, unmerged)."""
    import torch
    from transformers import AutoTokenizer

    cls = auto_class(task)
    tokenizer = AutoTokenizer.from_pretrained(weights.folder)
    extra: dict[str, Any] = {}
    if task == "classification" and weights.labels:
        extra = {"num_labels": len(weights.labels), "id2label": dict(enumerate(weights.labels)),
                 "label2id": {n: i for i, n in enumerate(weights.labels)}}  # fmt: skip
    if weights.kind == "model":
        model = cls.from_pretrained(weights.folder, dtype=torch.float32, **extra)
        return model.eval(), tokenizer
    from peft import PeftModel

    base_model = cls.from_pretrained(base, dtype=torch.float32, **extra)
    if task == "classification" and base_model.config.pad_token_id is None:
        base_model.config.pad_token_id = tokenizer.pad_token_id
    model = PeftModel.from_pretrained(base_model, weights.folder)
    return model.eval(), tokenizer


def inputs(tokenizer: Any, task: str) -> dict[str, Any]:
    batch = tokenizer(list(PROMPTS), return_tensors="pt", padding=True)
    if task == "seq2seq":
        batch["decoder_input_ids"] = batch["input_ids"][:, :4]
    return dict(batch)


def logits(model: Any, batch: dict[str, Any]) -> Any:
    import torch

    with torch.no_grad():
        out = model(**batch).logits.float()
    if "attention_mask" in batch and out.dim() == 3 and out.shape[1] == batch["attention_mask"].shape[1]:
        out = out * batch["attention_mask"].unsqueeze(-1)  # padding positions do not count
    return out


def compare(reference: Any, got: Any, what: str, tolerance: float) -> dict[str, Any]:
    """max relative logit difference and greedy agreement; CheckFailed beyond `tolerance`."""
    scale = float(reference.abs().max()) or 1.0
    diff = float((got - reference).abs().max()) / scale
    same = float((got.argmax(-1) == reference.argmax(-1)).float().mean())
    result = {"max_rel_logit_diff": round(diff, 8), "tolerance": tolerance, "argmax_agreement": round(same, 4)}
    if not diff <= tolerance:
        raise CheckFailed(f"{what}: logits differ from the job's model by {diff:.3g} (relative), over {tolerance}")
    return result


def merged(model: Any) -> Any:
    """The adapter folded into the base (a full model); a full job's model as it is."""
    if hasattr(model, "merge_and_unload"):
        return model.merge_and_unload()
    return model


def save_merged(model: Any, tokenizer: Any, out: Path, dtype: str, shown_base: str) -> None:
    """The merged model in `dtype` with its tokenizer and config (safetensors); the base named as the tenant sees it."""
    import torch

    torch_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "f32": torch.float32}[dtype]
    # a converted copy of the weights: the fp32 model stays exact for the checks (and any other format) after it
    state = {k: v.to(torch_dtype) for k, v in model.state_dict().items()}
    model.save_pretrained(out, state_dict=state, safe_serialization=True)
    tokenizer.save_pretrained(out)
    config = out / "config.json"
    values = json.loads(config.read_text(encoding="utf-8"))
    values["_name_or_path"] = shown_base
    values["dtype"] = str(torch_dtype).removeprefix("torch.")  # what `dtype="auto"` loads it as
    config.write_text(json.dumps(values, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def check_reload(out: Path, task: str, dtype: str, reference: Any, batch: dict[str, Any]) -> dict[str, Any]:
    """Reload the written folder (its weights in their saved dtype, computed in fp32) and compare its logits with
    the reference; also that the safetensors hold the dtype asked for."""
    import torch
    from safetensors import safe_open

    wanted = {"fp16": "F16", "bf16": "BF16", "f32": "F32"}[dtype]
    dtypes = set()
    for shard in sorted(out.glob("*.safetensors")):
        with safe_open(str(shard), framework="pt") as fh:
            dtypes |= {fh.get_slice(k).get_dtype() for k in fh.keys()}  # noqa: SIM118 - safe_open has no iterator
    if dtypes != {wanted}:
        raise CheckFailed(f"merged model: tensors are {sorted(dtypes)}, expected {wanted}")
    model = auto_class(task).from_pretrained(out, dtype=torch.float32).eval()
    return {**compare(reference, logits(model, batch), f"merged model ({dtype})", TOLERANCE[dtype]), "dtype": wanted}
