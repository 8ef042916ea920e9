"""What a job starts from, shared by its validation (jobs/validate.py) and its training runs (jobs/train.py):
the base model's folder, the resolved hyperparameters and the uploaded rows. No model code here (no peft, no
Trainer): a validation work horse imports only what tokenizing needs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ftjobs.client.models import Hyperparameters, JobCreate, Task, resolve_hyperparameters
from ftjobs.core.keys import file_lines_path, file_path
from ftjobs.jobs.data import LineMap, Row, read_jsonl
from ftjobs.jobs.errors import DataError, InvalidModel, ModelNotFound
from ftjobs.jobs.storage import Store


def resolve_model_path(model: str, roots: tuple[Path, ...]) -> Path:
    """An absolute path inside a model root, or a path relative to the first root that has it."""
    requested = Path(model).expanduser()
    if requested.is_absolute():
        candidates = [requested]
    else:
        candidates = [root / requested for root in roots]
    for candidate in candidates:
        path = candidate.resolve()
        inside = any(path.is_relative_to(root.resolve()) for root in roots)
        if inside and (path / "config.json").is_file():
            return path
    raise ModelNotFound(
        f"no model (a folder with config.json) at {model!r} under the configured model roots", param="model"
    )


def hyperparameters(request: JobCreate, resolved: dict[str, Any]) -> Hyperparameters:
    """What the API resolved wins; anything missing is resolved here the same way."""
    hp = resolve_hyperparameters(request)
    hp.update({k: v for k, v in resolved.items() if k in hp and v is not None and v != "auto"})
    return Hyperparameters.model_validate(hp)


def fetch_rows(store: Store, tenant: str, file_id: str, name: str, work: Path) -> list[Row]:
    rel = file_path(tenant, file_id)
    if not store.exists(rel):
        raise DataError(f"{name} {file_id} is not in the store", param=name)
    lines = None  # CSV/Parquet uploads have a line map: errors cite the user's own lines
    if store.exists(lines_rel := file_lines_path(tenant, file_id)):
        lines = LineMap.load(store.download(lines_rel, work / "data" / f"{file_id}.lines.json"))
    return read_jsonl(store.download(rel, work / "data" / f"{file_id}.jsonl"), name, lines)


def load(loader: Any, path: Path, **kwargs: Any) -> Any:
    """`loader(path)` (a from_pretrained); a folder that is not a loadable model is the caller's fault."""
    try:
        return loader(str(path), **kwargs)
    except (OSError, ValueError, KeyError) as e:
        raise InvalidModel(f"could not load {path.name}: {type(e).__name__}: {short(e)}", param="model") from None


def load_model(path: Path, task: Task, labels: list[str] | None, **overrides: Any) -> Any:
    """The base model for `task` in fp32 (bf16 autocast on GPUs that have it); `overrides` are config attributes."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoModelForSequenceClassification

    if task == Task.classification:
        assert labels is not None
        return load(
            AutoModelForSequenceClassification.from_pretrained,
            path,
            num_labels=len(labels),
            id2label=dict(enumerate(labels)),
            label2id={name: i for i, name in enumerate(labels)},
            ignore_mismatched_sizes=True,  # a base that already has a head for other labels gets a fresh one
            dtype=torch.float32,
            **overrides,  # e.g. dropout probabilities
        )
    if task == Task.seq2seq:
        return load(AutoModelForSeq2SeqLM.from_pretrained, path, dtype=torch.float32, **overrides)
    return load(AutoModelForCausalLM.from_pretrained, path, dtype=torch.float32, **overrides)


def short(e: BaseException, limit: int = 300) -> str:
    """An exception's text on one line, at most `limit` characters."""
    text = " ".join(str(e).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
