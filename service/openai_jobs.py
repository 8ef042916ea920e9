"""OpenAI's fine-tuning API over ftjobs' jobs: one implementation, two shapes.

A `FineTuningJobCreate` becomes a `JobCreate` (then the same checks, store, queue and worker as `POST /v1/jobs`);
a `Job` becomes a `FineTuningJob`; events are shown newest first, as OpenAI lists them. What maps to what:

    method.type supervised | dpo   task: dpo for dpo, else `task` (extra) or inferred from the training file's format
    n_epochs, batch_size           hyperparameters.n_epochs, batch_size ("auto": ftjobs' defaults, 3 and 8)
    learning_rate_multiplier       times the learning rate "auto" resolves to for the method and task
    seed                           hyperparameters.seed (default 42)
    model `ft:<base>:<suffix>:<id>`  parent_job_id = <id>, model = its base (continued training)
    peft, task, data, training ... ftjobs' own fields (extra_body): the strategy (LoRA by default), data
                                   preparation, any other Hyperparameters field (safeguards included)
"""

from __future__ import annotations

import re
import time
from typing import Any, cast

from pydantic import ValidationError as PydanticValidationError

from ftjobs.client.models import (
    JOB_ID_PATTERN,
    TASK_FORMATS,
    Event,
    FineTuningJob,
    FineTuningJobCreate,
    FineTuningJobEvent,
    FineTuningJobEventList,
    Hyperparameters,
    Job,
    JobCreate,
    JobStatus,
    Task,
    resolve_hyperparameters,
)
from ftjobs.client.models.openai import OpenAIHyperparameters
from ftjobs.core import keys
from ftjobs.core.records import as_text, decode_entry
from ftjobs.core.retention import archived_page
from ftjobs.service.errors import InvalidRequest, JobNotFound, ModelNotFound, ValidationError
from ftjobs.service.store import Store, stream_cursor

FT_PREFIX = "ft:"
EVENT_PREFIX = "ftevent-"
OPENAI_SET = ("n_epochs", "batch_size", "seed")  # Hyperparameters fields set by OpenAI's own fields, not `training`
FORMAT_TASKS = {fmt: task for task, formats in TASK_FORMATS.items() for fmt in formats}
BETA_FIELDS = ("dpo_beta", "beta")  # where a deployment's Hyperparameters keeps DPO's beta, if it has one
REQUEST_PARAMS = {"hyperparameters": "training", "method": "peft"}  # JobCreate's field -> the OpenAI body's


def fine_tuned_model(job: Job) -> str | None:
    """`ft:<base>:<suffix>:<job id>` (OpenAI's form; the suffix may be empty) once the job succeeded."""
    if job.status != JobStatus.succeeded:
        return None
    return f"{FT_PREFIX}{job.model}:{job.suffix or ''}:{job.id}"


def job_id_of_model(model: str) -> str | None:
    """The job id a fine-tuned model name ends with (None for a base model name)."""
    if not model.startswith(FT_PREFIX):
        return None
    tail = model.rsplit(":", 1)[-1]
    return tail if re.fullmatch(JOB_ID_PATTERN, tail) else None


def fine_tuned_job(store: Store, tenant: str, model: str, param: str = "model") -> Job:
    """The succeeded, not deleted job behind `ft:...:<id>`, whose fine_tuned_model is exactly `model`."""
    job_id = job_id_of_model(model)
    try:
        job = store.get_job(tenant, job_id) if job_id else None
    except JobNotFound:
        job = None
    if job is None or fine_tuned_model(job) != model or store.redis.sismember(keys.deleted_models_key(tenant), job.id):
        raise ModelNotFound(f"No fine-tuned model {model!r}.", param=param)
    return job


# ----------------------------------------------------------------------------- create


def to_job_create(req: FineTuningJobCreate, store: Store, tenant: str) -> JobCreate:
    """The JobCreate an OpenAI request stands for; a 4xx naming the field for what ftjobs cannot honour."""
    method_type = req.method.type if req.method else "supervised"
    given = getattr(req.method, method_type, None) if req.method else None
    if req.method and req.hyperparameters:
        raise InvalidRequest(
            f"give hyperparameters under method.{method_type}.hyperparameters only (the top-level form is legacy)",
            param="hyperparameters",
        )
    hp = given.hyperparameters if given else req.hyperparameters or OpenAIHyperparameters()
    where = f"method.{method_type}.hyperparameters" if req.method else "hyperparameters"
    model, parent = req.model, req.parent_job_id
    if job_id_of_model(req.model) or req.model.startswith(FT_PREFIX):  # continue a fine-tuned model
        parent_job = fine_tuned_job(store, tenant, req.model)
        if parent is not None and parent != parent_job.id:
            raise InvalidRequest("parent_job_id differs from the job of the fine-tuned `model`", param="parent_job_id")
        model, parent = parent_job.model, parent_job.id
    fields: dict[str, Any] = {
        "model": model,
        "task": task_of(req, method_type, store, tenant),
        "training_file": req.training_file,
        "validation_file": req.validation_file,
        "suffix": req.suffix,
        "metadata": req.metadata or {},
        "parent_job_id": parent,
        "hyperparameters": training_fields(req, hp, method_type, where),
        "integrations": sorted({i.type for i in req.integrations or []}),
    }
    if req.peft is not None:
        fields["method"] = req.peft.model_dump(mode="json")
    if req.data is not None:
        fields["data"] = req.data.model_dump(mode="json")
    for name in ("reference_file", "group_field", "priority", "eval_generation_limit", "eval_samples"):
        if getattr(req, name) is not None:
            fields[name] = getattr(req, name)
    try:
        created = JobCreate.model_validate(fields)
    except PydanticValidationError as e:
        first = e.errors()[0]
        loc = [str(part) for part in first["loc"]]
        param = ".".join([REQUEST_PARAMS.get(loc[0], loc[0]), *loc[1:]]) if loc else None
        raise ValidationError(f"{param or 'body'}: {first['msg']}", param=param) from None
    if isinstance(hp.learning_rate_multiplier, float | int) and created.hyperparameters.learning_rate == "auto":
        rate = resolve_hyperparameters(created)["learning_rate"] * hp.learning_rate_multiplier
        scaled = created.hyperparameters.model_copy(update={"learning_rate": rate})
        created = created.model_copy(update={"hyperparameters": scaled})
    return created


def task_of(req: FineTuningJobCreate, method_type: str, store: Store, tenant: str) -> str:
    """dpo for a dpo method; else the `task` given, or the one the training file's format trains."""
    tasks = {t.value for t in Task}
    if method_type == "dpo":
        if "dpo" not in tasks:
            raise InvalidRequest("method type 'dpo' is not available in this deployment", param="method.type")
        if req.task not in (None, "dpo"):
            raise InvalidRequest(f"task {req.task!r} does not go with method type 'dpo'", param="task")
        return "dpo"
    if req.task is not None:
        return req.task  # JobCreate's validation names a wrong one
    file_format = store.get_file(tenant, req.training_file, param="training_file").format
    task = FORMAT_TASKS.get(file_format) if file_format is not None else None
    if task is None:
        return Task.causal_lm.value  # check_files then says why the file cannot train it
    return "causal_lm" if req.method is not None and task.value == "dpo" else task.value


def training_fields(
    req: FineTuningJobCreate, hp: OpenAIHyperparameters, method_type: str, where: str
) -> dict[str, Any]:
    """ftjobs' Hyperparameters from OpenAI's fields and the `training` extra."""
    training = dict(req.training or {})
    for name in OPENAI_SET:
        if name in training:
            own = "seed" if name == "seed" else f"{where}.{name}"
            raise InvalidRequest(f"set {name} with `{own}`, not in `training`", param=f"training.{name}")
    if "learning_rate" in training and hp.learning_rate_multiplier != "auto":
        raise InvalidRequest(
            "give either training.learning_rate or learning_rate_multiplier, not both", param="training.learning_rate"
        )
    if hp.n_epochs != "auto":
        training["n_epochs"] = hp.n_epochs
    if hp.batch_size != "auto":
        training["batch_size"] = hp.batch_size
    if req.seed is not None:
        training["seed"] = req.seed
    if hp.beta is not None:
        field = next((f for f in BETA_FIELDS if f in Hyperparameters.model_fields), None)
        if method_type != "dpo" or field is None:
            raise InvalidRequest("beta applies to method type 'dpo' only", param=f"{where}.beta")
        if hp.beta != "auto":
            training[field] = hp.beta
    return training


# ----------------------------------------------------------------------------- the job, in OpenAI's shape


def auto_learning_rate(job: Job) -> float:
    """The rate "auto" resolves to for this job's method and task (what the multiplier scales)."""
    fields = {name: getattr(job, name) for name in JobCreate.model_fields if hasattr(job, name)}
    probe = JobCreate.model_construct(**{**fields, "hyperparameters": Hyperparameters()})
    return float(resolve_hyperparameters(probe)["learning_rate"])


def job_eta(job: Job) -> float | None:
    """Seconds until the job ends, where known: training's ETA, or the final evaluation's (the last phase). Not an
    evaluation before training (the baseline), whose ETA is only that phase's."""
    progress = job.progress
    trained = progress.total_steps is not None and progress.step >= progress.total_steps
    return progress.eta_seconds if progress.phase == "training" or progress.phase == "evaluating" and trained else None


def to_openai_job(job: Job, result_files: list[str]) -> FineTuningJob:
    hp = job.hyperparameters
    rate = hp.learning_rate
    multiplier = 1.0 if rate == "auto" else float(f"{float(rate) / auto_learning_rate(job):.6g}")
    method_type = "dpo" if job.task.value == "dpo" else "supervised"
    shown: dict[str, Any] = {
        "n_epochs": hp.n_epochs,
        "batch_size": hp.batch_size,
        "learning_rate_multiplier": multiplier,
    }
    if method_type == "dpo":
        beta = next((getattr(hp, f) for f in BETA_FIELDS if hasattr(hp, f)), None)
        shown["beta"] = beta
    eta = job_eta(job)
    tokens = job.results.get("tokens_seen")
    return FineTuningJob.model_validate(
        {
            "id": job.id,
            "created_at": job.created_at,
            "finished_at": job.finished_at,
            "model": job.model,
            "fine_tuned_model": fine_tuned_model(job),
            "organization_id": job.tenant,
            "status": job.status.value,
            "hyperparameters": shown,
            "method": {
                "type": method_type,
                method_type: {"hyperparameters": shown},
                "peft": job.method.model_dump(mode="json"),  # ftjobs: the strategy it trains with
            },
            "result_files": result_files,
            "trained_tokens": int(tokens) if job.status == JobStatus.succeeded and tokens is not None else None,
            "estimated_finish": int(time.time() + eta) if job.status == JobStatus.running and eta else None,
            "error": job.error.model_dump() if job.error else None,
            "integrations": [
                {"type": name, **({"wandb": {"project": "ftjobs"}} if name == "wandb" else {})}
                for name in job.integrations
            ],
            "metadata": job.metadata or None,
            "seed": hp.seed,
            "training_file": job.training_file,
            "validation_file": job.validation_file,
        }
    )


# ----------------------------------------------------------------------------- events, newest first


def event_cursor(after: str) -> str:
    """`ftevent-<ms>-<seq>` (or a bare stream id) -> the stream id; ValidationError naming `after`."""
    try:
        return stream_cursor(after.removeprefix(EVENT_PREFIX))
    except ValueError as e:
        raise ValidationError(f"after: {e}", param="after") from None


def to_openai_event(event: Event) -> FineTuningJobEvent:
    """Our event as OpenAI's: levels info/warn/error, types message/metrics (metrics data gains OpenAI's keys)."""
    data = dict(event.data)
    is_metrics = event.type.value == "metrics"
    if is_metrics:
        values = data.get("values") or {}
        if data.get("split") == "train" and "loss" in values:
            data["train_loss"] = values["loss"]
        if data.get("split") == "eval" and "eval_loss" in values:
            data["valid_loss"] = values["eval_loss"]
    return FineTuningJobEvent(
        id=EVENT_PREFIX + event.id,
        created_at=int(event.created_at),
        level="warn" if event.level.value == "warning" else cast(Any, event.level.value),
        message=event.message,
        type="metrics" if is_metrics else "message",
        data=data,
    )


def list_events(store: Store, tenant: str, job_id: str, after: str | None, limit: int) -> FineTuningJobEventList:
    """A page of the job's events, newest first: those older than `after` (OpenAI's order and cursor)."""
    store.require_job(tenant, job_id)
    high = "+"
    if after is not None:
        cursor = event_cursor(after)
        if cursor == "0-0":  # nothing is older than the first possible id
            return FineTuningJobEventList(data=[], has_more=False)
        high = f"({cursor}"
    raw = store.redis.xrevrange(keys.events_key(tenant, job_id), max=high, min="-", count=limit + 1)
    entries = [(as_text(sid), decode_entry(body)) for sid, body in cast(list[tuple[bytes, dict[bytes, bytes]]], raw)]
    if not entries and store.storage is not None:  # archived after the job ended (core/retention.py)
        before = high[1:] if after is not None else None
        entries = archived_page(store.redis, store.storage, tenant, job_id, "events", before, limit + 1, True)[0]
    events = [to_openai_event(Event.model_validate({**body, "id": sid})) for sid, body in entries]
    page = events[:limit]
    return FineTuningJobEventList(data=page, has_more=len(events) > limit, last_id=page[-1].id if page else None)
