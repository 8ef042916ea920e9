"""What a JobCreate must satisfy beyond its schema, against the deployment and the tenant's data:
the model under a model root, files that exist in a format the task can train, a parent job to continue, the
tenant's per-job limits (as far as the API can count; the worker enforces all of them while training)."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path

from ftjobs.client.models import (
    ADAPTER_SHAPE_FIELDS,
    PARENT_TASKS,
    REFERENCE_FORMATS,
    TASK_FORMATS,
    Job,
    JobCreate,
    JobStatus,
    Method,
)
from ftjobs.core.adapter_shape import shape_conflict
from ftjobs.core.base_models import ModelEscapesRoots, resolve_model, shown_model
from ftjobs.core.tenants import TenantLimits
from ftjobs.service.errors import (
    IncompatibleFile,
    IncompatibleParentJob,
    JobLimitExceeded,
    JobNotFound,
    ModelNotAllowed,
    ParentJobNotSucceeded,
)
from ftjobs.service.store import Store


def check_model(model: str, roots: Sequence[str], param: str = "model") -> None:
    """Absolute paths must lie under a model root; relative ones and names (resolved by the worker) must not
    escape. The message never names the roots: they are the deployment's business, not the tenant's."""
    norm = os.path.normpath(model)
    if model.startswith("~") or norm == "." or norm == ".." or norm.startswith("../"):
        raise ModelNotAllowed(f"{param} {model!r} is not a model name or a path under a model root.", param=param)
    if os.path.isabs(norm) and not any(norm == root or norm.startswith(root.rstrip("/") + "/") for root in roots):
        raise ModelNotAllowed(
            f"{param} {model!r} is outside the configured model roots (see GET /v1/models).", param=param
        )


def check_models(req: JobCreate, roots: Sequence[str]) -> None:
    """Every model a job loads: the base model and the data augmentation models. Each is then kept (in the
    record, and so in everything the worker reports) as a tenant may see it: `tenant_form`."""
    check_model(req.model, roots)
    check_links(req.model, roots)
    req.model = tenant_form(req.model, roots)
    for field in ("augment_model", "augment_back_model"):
        value = getattr(req.data, field)
        if value is not None:
            check_model(value, roots, param=f"data.{field}")
            check_links(value, roots, param=f"data.{field}")
            setattr(req.data, field, tenant_form(value, roots))


def check_links(model: str, roots: Sequence[str], param: str = "model") -> None:
    """A model folder the API can see under the roots, with a file linking out of them (vocab.txt -> /etc/passwd):
    refused here, as the worker would refuse it before loading (a folder only the workers see: checked there)."""
    paths = [Path(r) for r in roots]
    try:
        resolve_model(model, paths)
    except ModelEscapesRoots as exc:  # named as the tenant may see it: relative to its root
        shown = shown_model(model, paths)
        message = f"{param} {shown!r}: its file {exc.file!r} links outside the model roots."
        raise ModelNotAllowed(message, param=param) from None
    except (OSError, RuntimeError):  # unreadable here, or a symlink loop: the worker's own check decides
        pass


def tenant_form(model: str, roots: Sequence[str]) -> str:
    """An absolute model path rewritten relative to its root (or as a packaged model's name), so the job record
    holds no server path; kept as given when the worker would resolve the short form to another folder (an
    earlier root with the same sub-folder): the caller wrote that path, so it shows them nothing new."""
    shown = shown_model(model, [Path(r) for r in roots])
    if shown == model:
        return model
    try:
        same = resolve_model(shown, [Path(r) for r in roots]) == resolve_model(model, [Path(r) for r in roots])
    except ModelEscapesRoots:  # refused by the worker either way, naming the file, not the path
        same = True
    return shown if same else model


def check_files(store: Store, tenant: str, req: JobCreate) -> None:
    """The files exist for this tenant and their row format can train the task."""
    allowed = TASK_FORMATS[req.task]
    train = store.get_file(tenant, req.training_file, param="training_file")
    for file_id, param in (
        (req.training_file, "training_file"), (req.validation_file, "validation_file"),
        (req.reference_file, "reference_file"),
    ):  # fmt: skip
        if file_id and store.get_file(tenant, file_id, param=param).format is None:  # a job's result file
            raise IncompatibleFile(f"{param} {file_id} is a job's result file, not a dataset.", param=param)
    if train.format not in allowed:
        needs = ", ".join(sorted(allowed))
        raise IncompatibleFile(
            f"training_file {train.id} has format {train.format}; task {req.task.value} needs one of: {needs}.",
            param="training_file",
        )
    if req.validation_file:
        valid = store.get_file(tenant, req.validation_file, param="validation_file")
        if valid.format != train.format:
            raise IncompatibleFile(
                f"validation_file {valid.id} has format {valid.format}; "
                f"training_file has {train.format}; they must match.",
                param="validation_file",
            )
    if req.reference_file:
        ref = store.get_file(tenant, req.reference_file, param="reference_file")
        if ref.format not in REFERENCE_FORMATS[req.task]:
            raise IncompatibleFile(
                f"reference_file {ref.id} has format {ref.format}; task {req.task.value} needs one of: "
                f"{', '.join(sorted(REFERENCE_FORMATS[req.task]))}.",
                param="reference_file",
            )


def check_parent(store: Store, tenant: str, req: JobCreate) -> None:
    """parent_job_id: a succeeded job of this tenant, of the same task, method type and adapter shape.

    `req.method` becomes the resolved method (`inherit_method`): what the child leaves out is the parent's.
    """
    if req.parent_job_id is None:
        return
    try:
        parent = store.get_job(tenant, req.parent_job_id)
    except JobNotFound:
        raise JobNotFound(f"No job {req.parent_job_id!r}.", param="parent_job_id") from None
    if parent.status != JobStatus.succeeded:
        raise ParentJobNotSucceeded(
            f"parent_job_id {parent.id} is {parent.status.value}; only a succeeded job can be continued.",
            param="parent_job_id",
        )
    if parent.task not in PARENT_TASKS[req.task] or parent.method.type != req.method.type:
        tasks = " or ".join(sorted(PARENT_TASKS[req.task]))
        raise IncompatibleParentJob(
            f"parent_job_id {parent.id} trained {parent.method.type} for {parent.task.value}; this job asks for "
            f"{req.method.type} for {req.task.value}: the method must match, and the parent's task be {tasks}.",
            param="parent_job_id",
        )
    req.method = inherit_method(parent, req.method)


def inherit_method(parent: Job, method: Method) -> Method:
    """The parent's method settings (as its worker resolved them, e.g. the target modules peft picked) overridden
    by those the child sets; a setting that shapes the adapter may only repeat the parent's value."""
    trained = {**parent.method.model_dump(), **(parent.resolved_hyperparameters.get("method") or {})}
    given = method.model_dump(include=method.model_fields_set - {"type"})
    given = {k: v for k, v in given.items() if v is not None}  # null (auto) inherits too
    if conflict := shape_conflict(method.type, given, trained):
        name, shape = conflict.name, ADAPTER_SHAPE_FIELDS.get(method.type, ())
        raise IncompatibleParentJob(
            f"method.{name}={json.dumps(conflict.wanted)} differs from the parent job {parent.id}'s "
            f"{name}={json.dumps(conflict.trained)}: a continued {method.type} keeps the parent's "
            f"{', '.join(shape)}. Leave method.{name} out to inherit it, or train a new job without "
            "parent_job_id.",
            param=f"method.{name}",
        )
    cls = type(method)
    try:
        return cls.model_validate({k: v for k, v in {**trained, **given}.items() if k in cls.model_fields})
    except ValueError as e:  # a parent recorded by an older version with settings this one rejects
        raise IncompatibleParentJob(
            f"parent_job_id {parent.id}'s method settings cannot be continued: {e}", param="parent_job_id"
        ) from None


def planned_steps(req: JobCreate, train_rows: int | None) -> tuple[int, str] | None:
    """(the fewest optimizer steps the job can train, the field that sets them), or None when the API cannot
    know: max_steps when given; else epochs x steps per epoch over the training file's rows, when no data step
    can change how many rows train (the held-out validation split counted as the worker makes it)."""
    hp = req.hyperparameters
    if hp.max_steps is not None:
        return hp.max_steps, "hyperparameters.max_steps"
    if train_rows is None or req.data.model_fields_set:  # a data step (dedup, augmentation ...) changes the rows
        return None
    rows = train_rows
    if req.validation_file is None and hp.validation_split > 0:
        rows -= max(1, round(rows * hp.validation_split))  # jobs/data/split.py; too few rows keeps them all
    per_epoch = max(1, math.ceil(math.ceil(max(rows, 1) / hp.batch_size) / hp.gradient_accumulation_steps))
    return hp.n_epochs * per_epoch, "hyperparameters.n_epochs"


def check_job_limits(store: Store, tenant: str, req: JobCreate, limits: TenantLimits) -> None:
    """Refuse (422, naming the field and the limit) a job whose steps the API can count and that passes
    max_job_steps; tokens and wall time only the worker can measure."""
    if limits.max_job_steps is None:
        return
    train_rows = store.get_file(tenant, req.training_file, param="training_file").rows
    planned = planned_steps(req, train_rows)
    if planned is not None and planned[0] > limits.max_job_steps:
        steps, field = planned
        how = "" if field.endswith("max_steps") else f" ({req.hyperparameters.n_epochs} epochs over {train_rows} rows)"
        raise JobLimitExceeded(
            f"{field}: the job would train {steps} optimizer steps{how}; this tenant's limit max_job_steps is "
            f"{limits.max_job_steps}.",
            param=field,
        )
