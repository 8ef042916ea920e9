"""Sweeps on the API side: the checks of a new sweep (4xx naming the field), its creation, the view with each trial's
live job status, listing and cancelling (the sweep, then every trial job still going).

The trials themselves are created by the sweep driver in the workers (`jobs/sweep_driver.py`); the layout is
`core/sweeps.py`'s.
"""

from __future__ import annotations

import json
import re
from typing import Any, cast

from pydantic import ValidationError as PydanticValidationError

from ftjobs.client.models import JobStatus, Task
from ftjobs.client.models.sweeps import (
    MAX_GRID_VALUES,
    SWEEP_ID_PATTERN,
    Choice,
    FloatRange,
    IntRange,
    Sampler,
    Sweep,
    SweepCreate,
    SweepList,
    SweepStatus,
    SweepTrial,
    TrialState,
    grid_count,
)
from ftjobs.client.models.training import Hyperparameters
from ftjobs.core import keys
from ftjobs.core import sweeps as layout
from ftjobs.core.records import as_text, decode_hash, new_id
from ftjobs.service.errors import Conflict, JobNotCancellable, JobNotFound, NotFound, ValidationError
from ftjobs.service.store import Store

# What a trial can be scored on, per task: keys of results.final that its evaluations report too (or, for the
# generation scores, at the end only: such a sweep is not pruned).
TASK_METRICS: dict[Task, frozenset[str]] = {
    Task.classification: frozenset({"eval_loss", "accuracy", "f1", "precision", "recall"}),
    Task.causal_lm: frozenset({"eval_loss", "perplexity", "bleu", "rouge1", "rouge2", "rougeL", "token_accuracy"}),
    Task.seq2seq: frozenset({"eval_loss", "perplexity", "bleu", "rouge1", "rouge2", "rougeL", "token_accuracy"}),
    Task.dpo: frozenset({"eval_loss", "rewards/accuracies", "rewards/margins"}),
}
TRIAL_JOB_FIELDS = ("status", "progress", "results", "resolved", "error", "artifacts")


class SweepNotFound(NotFound):
    """No such sweep for this tenant."""


class SweepNotCancellable(Conflict):
    """The sweep has already ended."""


# ----------------------------------------------------------------------------- checks


def check_sweep(req: SweepCreate) -> None:
    """Every parameter names a field of the base request that each of its values (the bounds of a range) fits;
    the metric suits the task and has validation data to come from; a grid is finite and not smaller than
    n_trials."""
    base = req.job
    for name, dist in req.search_space.items():
        param = f"search_space.{name}"
        group, field = name.split(".", 1)
        fields = Hyperparameters.model_fields if group == "hyperparameters" else type(base.method).model_fields
        if field not in fields or (group == "method" and field == "type"):
            raise ValidationError(
                f"{name} is not a field of the base job's {group}"
                + (f" ({base.method.type})" if group == "method" else ""),
                param=param,
            )
        for value in corner_values(dist):
            try:
                layout.trial_request(base, {name: value}, "sweep-" + "0" * 20, 0)
            except PydanticValidationError as e:
                detail = e.errors()[0]
                raise ValidationError(f"{name} = {value!r} makes no valid job: {detail['msg']}", param=param) from None
    check_metric(req)
    if req.sampler == Sampler.grid:
        size = 1
        for name, dist in req.search_space.items():
            count = grid_count(dist)
            if count is None or count > MAX_GRID_VALUES:
                why = "a step or a list" if count is None else f"at most {MAX_GRID_VALUES} values (not {count})"
                raise ValidationError(f"a grid needs {why} for {name}", param=f"search_space.{name}")
            size *= count
        if req.n_trials > size:
            raise ValidationError(f"n_trials ({req.n_trials}) is more than the grid's {size} points", param="n_trials")


def check_metric(req: SweepCreate) -> None:
    base = req.job
    known = TASK_METRICS[base.task]
    if req.metric not in known and not (base.task == Task.classification and re.fullmatch(r"f1/.+", req.metric)):
        raise ValidationError(
            f"metric {req.metric!r} is not reported for task {base.task}: one of {', '.join(sorted(known))}",
            param="metric",
        )
    if base.validation_file is None and base.hyperparameters.validation_split == 0:
        raise ValidationError(
            "a sweep scores trials on validation data: give a validation_file or a validation_split > 0",
            param="job.validation_file",
        )


def corner_values(dist: FloatRange | IntRange | Choice) -> list[Any]:
    """The values a distribution's check tries: its bounds, or every choice."""
    if isinstance(dist, Choice):
        return list(dist.values)
    return [dist.low, dist.high]


# ----------------------------------------------------------------------------- create, read, list, cancel


def create_sweep(store: Store, tenant: str, req: SweepCreate) -> Sweep:
    sweep_id = new_id("sweep-")
    layout.create_sweep(store.redis, layout.new_sweep_record(tenant, sweep_id, req))
    return get_sweep(store, tenant, sweep_id)


def get_sweep(store: Store, tenant: str, sweep_id: str) -> Sweep:
    record = layout.read_sweep(store.redis, tenant, sweep_id) if re.fullmatch(SWEEP_ID_PATTERN, sweep_id) else None
    if record is None:
        raise SweepNotFound(f"No sweep {sweep_id!r}.")
    return sweep_view(store, record)


def sweep_view(store: Store, record: dict[str, Any]) -> Sweep:
    """The sweep as stored, with each trial still going shown as its job is now (status, steps, metric)."""
    tenant = record["tenant"]
    trials = [dict(t) for t in record.get("trials") or []]
    live = [t for t in trials if t["state"] in (TrialState.queued, TrialState.running) and t.get("job_id")]
    pipe = store.redis.pipeline(transaction=False)
    for t in live:
        pipe.hmget(keys.job_key(tenant, t["job_id"]), list(TRIAL_JOB_FIELDS))
    metric = record["request"]["metric"]
    for t, values in zip(live, cast(list[list[Any]], pipe.execute()), strict=True):
        job = {f: json.loads(v) for f, v in zip(TRIAL_JOB_FIELDS, values, strict=True) if v is not None}
        status = job.get("status")
        t["job_status"] = status
        progress = job.get("progress") or {}
        t["steps"], t["total_steps"] = progress.get("step"), progress.get("total_steps")
        if status == JobStatus.running or (status and JobStatus(status).is_terminal):
            t["state"] = TrialState.running  # a job that ended is a trial the driver settles within seconds
        last = (job.get("results") or {}).get("final") or {}
        t["value"] = last.get(metric, t.get("value"))
    return Sweep.model_validate({**record, "trials": [SweepTrial.model_validate(t) for t in trials]})


def list_sweeps(store: Store, tenant: str, after: str | None, limit: int) -> SweepList:
    """Newest first (cursor: the last sweep id of the previous page)."""
    index = layout.tenant_sweeps_key(tenant)
    high = f"({after}" if after else "+"
    ids = [as_text(i) for i in cast(list[bytes], store.redis.zrevrangebylex(index, high, "-", 0, limit + 1))]
    sweeps = []
    for sweep_id in ids[:limit]:
        raw = store.redis.hgetall(layout.sweep_key(tenant, sweep_id))
        if raw:
            sweeps.append(sweep_view(store, decode_hash(raw)))  # type: ignore[arg-type]
    return SweepList(data=sweeps, has_more=len(ids) > limit, last_id=sweeps[-1].id if sweeps else None)


def cancel_sweep(store: Store, tenant: str, sweep_id: str, cancel_job: Any) -> Sweep:
    """running -> cancelled, then every trial job still going is cancelled (`cancel_job(job_id)`, as
    `POST /v1/jobs/{id}/cancel`); the driver starts no trial after the first write. Cancelling a cancelled sweep
    again cancels what is still going (an earlier request that died half-way); an ended one is a 409."""
    sweep = get_sweep(store, tenant, sweep_id)
    if not layout.request_cancel(store.redis, tenant, sweep_id) and sweep.status != SweepStatus.cancelled:
        raise SweepNotCancellable(f"Sweep {sweep_id} is already {sweep.status}; it cannot be cancelled.")
    for trial in get_sweep(store, tenant, sweep_id).trials:  # read after the write: a trial added before it is here
        if trial.job_id and trial.state in (TrialState.queued, TrialState.running):
            try:
                cancel_job(trial.job_id)
            except (JobNotCancellable, JobNotFound):
                pass  # it ended meanwhile
    return get_sweep(store, tenant, sweep_id)
