"""What a job starts from, shared by its validation (jobs/validate.py) and its training runs (jobs/train.py):
the base model's folder, the hyperparameters the API resolved and the uploaded rows. No model code here (no
peft, no Trainer): a validation work horse imports only what tokenizing needs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ftjobs.client.models import Hyperparameters, JobCreate, Task
from ftjobs.core.base_models import ModelEscapesRoots, resolve_model, shown_model
from ftjobs.core.keys import file_lines_path, file_path
from ftjobs.core.storage import Storage
from ftjobs.jobs.data.read import LineMap, Row, read_jsonl
from ftjobs.jobs.errors import DataError, InvalidModel, JobFailed, ModelNotFound


def resolve_model_path(model: str, roots: tuple[Path, ...]) -> Path:
    """The base model's folder under the model roots (`ftjobs.core.base_models`), or the job fails."""
    shown = shown_model(model, roots)  # messages name it as the tenant may see it, never a server path
    try:
        path = resolve_model(model, roots)
    except ModelEscapesRoots as e:  # never read: the tokenizer would follow vocab.txt -> /etc/passwd
        message = f"model {shown!r}: its file {e.file!r} links outside the model roots"
        raise InvalidModel(message, param="model") from None
    if path is None:
        raise ModelNotFound(
            f"no model (a folder with config.json) at {shown!r} under the configured model roots", param="model"
        )
    return path


def hyperparameters(request: JobCreate, resolved: dict[str, Any]) -> Hyperparameters:
    """The hyperparameters the API resolved when it created the job (the record's `resolved`), never re-derived
    here; a value the record lacks (a record older than that field) is the request's own."""
    hp = request.hyperparameters.model_dump()
    hp.update({k: v for k, v in resolved.items() if k in hp})
    unresolved = sorted(k for k, v in hp.items() if v == "auto")
    if unresolved:  # the API resolves every "auto" at create time: a record without them was not written by it
        raise JobFailed(f"the job record has no resolved {', '.join(unresolved)}", param="hyperparameters")
    return Hyperparameters.model_validate(hp)


def fetch_rows(store: Storage, tenant: str, file_id: str, name: str, work: Path) -> list[Row]:
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
        why = short(e).replace(str(path), path.name)  # the folder's name, not where the server keeps it
        raise InvalidModel(f"could not load {path.name}: {type(e).__name__}: {why}", param="model") from None


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
