"""Continue training from a finished job (`parent_job_id`): fetch its weights and labels from the store.

The parent's artifacts lie under `ftjobs.core.keys.artifact_path`; its manifest.json lists every file. peft methods
continue from adapter/ (PeftModel.from_pretrained(base, adapter/, is_trainable=True)), bottleneck adapters from
adapter/ (jobs.training.adapters.load_bottleneck_adapter), full fine-tuning loads model/ instead of the base.

The child keeps the parent's adapter shape (client.models.ADAPTER_SHAPE_FIELDS: LoRA r/alpha/target modules/DoRA,
virtual tokens, bottleneck sizes ...): the API fills what the child leaves out from the parent and rejects a
different value; `attach` checks again against the saved config. Training-only settings (LoRA and adapter dropout)
take the child's value.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ftjobs.client.models import (
    ADAPTER_SHAPE_FIELDS,
    PARENT_TASKS,
    AdapterMethod,
    FullMethod,
    Hyperparameters,
    JobCreate,
    LoraMethod,
    Task,
)
from ftjobs.core.adapter_shape import shape_conflict
from ftjobs.core.keys import artifact_path, file_path, job_record_path
from ftjobs.core.storage import Storage
from ftjobs.jobs.data.inputs import fetch_rows
from ftjobs.jobs.data.read import Row, label_of
from ftjobs.jobs.errors import DataError, InvalidMethod
from ftjobs.jobs.training import adapters
from ftjobs.jobs.training.methods import ADAPTER_CONFIG_ATTR
from ftjobs.jobs.training.safeguards import InvalidRequest

PARAM = "parent_job_id"
MAX_PARENT_REFERENCE = 1000  # rows of the parent's data a child measures forgetting (and EWC) on


@dataclass
class Parent:
    job_id: str
    weights: Path  # the local adapter/ or model/ folder
    labels: list[str] | None  # classification: the parent's label order (labels.json)
    training_file: str | None = None  # what the parent trained on: the reference data of a continued job
    task: Task | None = None  # the parent's task: a dpo job may continue a causal_lm one (SFT then DPO)


def fetch_parent(store: Storage, tenant: str, request: JobCreate, work: Path) -> Parent:
    """Download the parent's weights (and labels) into `work/parent`; fails invalid_method if they do not fit."""
    parent_id = request.parent_job_id
    assert parent_id is not None
    manifest_rel = artifact_path(tenant, parent_id, "manifest.json")
    if not store.exists(manifest_rel):
        raise InvalidMethod(f"parent job {parent_id} has no artifacts in the store", param=PARAM)
    manifest = json.loads(store.download(manifest_rel, work / "parent" / "manifest.json").read_text())
    tasks = {t.value for t in PARENT_TASKS[request.task]}
    if manifest.get("task") not in tasks or manifest.get("method") != request.method.type:
        raise InvalidMethod(
            f"parent job {parent_id} trained {manifest.get('method')} for {manifest.get('task')}; this job asks "
            f"for {request.method.type} for {request.task.value}: the method must match, the task be "
            f"{' or '.join(sorted(tasks))}",
            param=PARAM,
        )
    folder = "model" if isinstance(request.method, FullMethod) else "adapter"
    # an evaluation of one of the parent's epoch checkpoints (jobs/training/epoch_weights.py) reads its weights
    kept = f"checkpoints/step-{request.checkpoint_step}/" if request.checkpoint_step else ""
    names = [f["name"] for f in manifest.get("files", []) if f["name"].startswith(kept + folder + "/")]
    if not names:
        param = "checkpoint_step" if kept else PARAM
        raise InvalidMethod(f"parent job {parent_id} saved no {kept}{folder}/ weights", param=param)
    for name in names:
        store.download(artifact_path(tenant, parent_id, name), work / "parent" / name.removeprefix(kept))
    labels = None
    if request.task == Task.classification:
        rel = artifact_path(tenant, parent_id, "labels.json")
        if not store.exists(rel):
            raise InvalidMethod(f"parent job {parent_id} has no labels.json", param=PARAM)
        by_id = json.loads(store.download(rel, work / "parent" / "labels.json").read_text())
        labels = [by_id[str(i)] for i in range(len(by_id))]
    record_rel = job_record_path(tenant, parent_id)  # the parent's final record: its request names its data
    training_file = None
    if store.exists(record_rel):
        record = json.loads(store.download(record_rel, work / "parent" / "job.json").read_text())
        training_file = (record.get("request") or {}).get("training_file")
    return Parent(parent_id, work / "parent" / folder, labels, training_file, Task(manifest["task"]))


def parent_rows(store: Storage, tenant: str, parent: Parent, hp: Hyperparameters, work: Path) -> list[Row] | None:
    """Up to MAX_PARENT_REFERENCE rows (a seeded sample) of the parent's training file: the reference data of a
    continued job without a reference_file. None when the parent's data is gone; EWC/replay then cannot run."""
    rows = None
    if parent.training_file and store.exists(file_path(tenant, parent.training_file)):
        rows = fetch_rows(store, tenant, parent.training_file, f"parent {parent.job_id}'s training_file", work)
    if not rows:
        if hp.ewc_lambda > 0 or hp.replay_ratio > 0:
            raise InvalidRequest(
                f"ewc_lambda and replay_ratio need reference data: the parent job {parent.job_id}'s training file "
                "is no longer in the store; give a reference_file",
                param="reference_file",
            )
        return None
    if len(rows) > MAX_PARENT_REFERENCE:
        rows = random.Random(hp.seed).sample(rows, MAX_PARENT_REFERENCE)
    return rows


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
    """The model to train, holding the parent's trained weights (peft methods and bottleneck adapters), with the
    child's training-only settings (dropout); fails invalid_method where the child asks for another shape."""
    if isinstance(method, AdapterMethod):
        try:
            config = json.loads((parent.weights / adapters.CONFIG_NAME).read_text())
            check_shape(method, config, parent.job_id)
            adapters.load_bottleneck_adapter(model, parent.weights)
        except (OSError, ValueError, KeyError) as e:
            raise InvalidMethod(f"could not load the parent's adapter: {e}", param=PARAM) from None
        for module in model.modules():
            if isinstance(module, adapters.BottleneckAdapter):
                module.dropout.p = method.dropout
        setattr(model, ADAPTER_CONFIG_ATTR, {**config, "dropout": method.dropout})
        model.train()
        return model
    from peft import PeftConfig, PeftModel

    try:
        peft_config = PeftConfig.from_pretrained(str(parent.weights))
    except (OSError, ValueError, KeyError) as e:
        raise InvalidMethod(f"could not load the parent's adapter config: {e}", param=PARAM) from None
    check_shape(method, peft_settings(method.type, peft_config), parent.job_id)
    if isinstance(method, LoraMethod):
        peft_config.lora_dropout = method.dropout
    # The parent's saved config names the base as its tenant sees it; peft's own checks (and a QLoRA merge)
    # read the folder this worker loaded it from.
    peft_config.base_model_name_or_path = getattr(model, "name_or_path", None) or peft_config.base_model_name_or_path
    try:
        return PeftModel.from_pretrained(model, str(parent.weights), is_trainable=True, config=peft_config)
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise InvalidMethod(f"could not load the parent's adapter: {e}", param=PARAM) from None


def check_shape(method: Any, trained: dict[str, Any], parent_id: str) -> None:
    """Every adapter-shaping setting the child names (null: inherit) equals the parent's saved one (the API's rule)."""
    if conflict := shape_conflict(method.type, method.model_dump(), trained):
        name = conflict.name
        raise InvalidMethod(
            f"method.{name}={json.dumps(conflict.wanted)} differs from the parent job {parent_id}'s {name}="
            f"{json.dumps(conflict.trained)}: a continued {method.type} keeps the parent's adapter shape",
            param=f"method.{name}",
        )


def peft_settings(kind: str, config: Any) -> dict[str, Any]:
    """A peft config in the request's terms (LoraMethod field names), module sets as sorted lists."""
    if kind == "lora":
        return {
            "r": config.r,
            "alpha": config.lora_alpha,
            "dropout": config.lora_dropout,
            "target_modules": _names(config.target_modules),
            "use_dora": bool(config.use_dora),
        }
    if kind == "ia3":
        return {
            "target_modules": _names(config.target_modules),
            "feedforward_modules": _names(config.feedforward_modules),
        }
    values: dict[str, Any] = {"num_virtual_tokens": config.num_virtual_tokens}
    if kind == "prompt_tuning":
        values["init_text"] = getattr(config, "prompt_tuning_init_text", None)
    if kind == "p_tuning":
        values["encoder_hidden_size"] = config.encoder_hidden_size
    return values


def resolved_method(model: Any, method: Any) -> dict[str, Any]:
    """The method as the model to train holds it (e.g. the target modules peft picked for the architecture):
    recorded as the job's resolved `method`, which a child job inherits and must match in shape."""
    values: dict[str, Any] = method.model_dump(mode="json")
    if isinstance(method, AdapterMethod):
        config = getattr(model, ADAPTER_CONFIG_ATTR, None) or {}
        values.update({k: config[k] for k in (*ADAPTER_SHAPE_FIELDS["adapter"], "dropout") if k in config})
    elif configs := getattr(model, "peft_config", None):
        settings = peft_settings(method.type, next(iter(configs.values())))
        values.update({k: v for k, v in settings.items() if v is not None})
    return values


def _names(modules: Any) -> list[str] | None:
    """peft keeps module names as a set (or a regex string); the request as a list."""
    if modules is None:
        return None
    return [modules] if isinstance(modules, str) else sorted(modules)
