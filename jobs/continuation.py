"""Continue training from a finished job (`parent_job_id`): fetch its weights and labels from the store.

The parent's artifacts lie under `client.keys.artifact_path`; its manifest.json lists every file. peft methods
continue from adapter/ (PeftModel.from_pretrained(base, adapter/, is_trainable=True)), bottleneck adapters from
adapter/ (jobs.adapters.load_bottleneck_adapter), full fine-tuning loads model/ instead of the base.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from client.keys import artifact_path
from client.models import AdapterMethod, FullMethod, JobCreate, Task
from jobs import adapters
from jobs.data import Row, label_of
from jobs.errors import DataError, InvalidMethod
from jobs.methods import ADAPTER_CONFIG_ATTR
from jobs.storage import Store

PARAM = "parent_job_id"


@dataclass
class Parent:
    job_id: str
    weights: Path  # the local adapter/ or model/ folder
    labels: list[str] | None  # classification: the parent's label order (labels.json)


def fetch_parent(store: Store, tenant: str, request: JobCreate, work: Path) -> Parent:
    """Download the parent's weights (and labels) into `work/parent`; fails invalid_method if they do not fit."""
    parent_id = request.parent_job_id
    assert parent_id is not None
    manifest_rel = artifact_path(tenant, parent_id, "manifest.json")
    if not store.exists(manifest_rel):
        raise InvalidMethod(f"parent job {parent_id} has no artifacts in the store", param=PARAM)
    manifest = json.loads(store.download(manifest_rel, work / "parent" / "manifest.json").read_text())
    if manifest.get("task") != request.task.value or manifest.get("method") != request.method.type:
        raise InvalidMethod(
            f"parent job {parent_id} trained {manifest.get('method')} for {manifest.get('task')}; this job asks "
            f"for {request.method.type} for {request.task.value}: they must match",
            param=PARAM,
        )
    folder = "model" if isinstance(request.method, FullMethod) else "adapter"
    names = [f["name"] for f in manifest.get("files", []) if f["name"].startswith(folder + "/")]
    if not names:
        raise InvalidMethod(f"parent job {parent_id} saved no {folder}/ weights", param=PARAM)
    for name in names:
        store.download(artifact_path(tenant, parent_id, name), work / "parent" / name)
    labels = None
    if request.task == Task.classification:
        rel = artifact_path(tenant, parent_id, "labels.json")
        if not store.exists(rel):
            raise InvalidMethod(f"parent job {parent_id} has no labels.json", param=PARAM)
        by_id = json.loads(store.download(rel, work / "parent" / "labels.json").read_text())
        labels = [by_id[str(i)] for i in range(len(by_id))]
    return Parent(parent_id, work / "parent" / folder, labels)


def check_labels(parent: Parent, rows: list[Row]) -> None:
    """classification: the new data may only use labels the parent was trained on (its head has no others)."""
    known = set(parent.labels or [])
    new = sorted({label_of(r) for r in rows} - known)
    if new:
        raise DataError(
            f"labels {', '.join(map(repr, new[:10]))} are not among the parent job {parent.job_id}'s labels "
            f"({', '.join(parent.labels or [])})",
            param="training_file",
        )


def attach(model: Any, method: Any, parent: Parent) -> Any:
    """The model to train, holding the parent's trained weights (peft methods and bottleneck adapters)."""
    if isinstance(method, AdapterMethod):
        try:
            adapters.load_bottleneck_adapter(model, parent.weights)
        except (OSError, ValueError, KeyError) as e:
            raise InvalidMethod(f"could not load the parent's adapter: {e}", param=PARAM) from None
        config = json.loads((parent.weights / adapters.CONFIG_NAME).read_text())
        setattr(model, ADAPTER_CONFIG_ATTR, config)
        model.train()
        return model
    from peft import PeftModel

    try:
        return PeftModel.from_pretrained(model, str(parent.weights), is_trainable=True)
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise InvalidMethod(f"could not load the parent's adapter: {e}", param=PARAM) from None
