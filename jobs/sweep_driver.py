"""The sweep driver: a thread in every worker that moves each running sweep on, one process at a time per sweep.

Every `interval_s`, for each sweep in ACTIVE_SWEEPS_KEY whose lock it gets (`core/sweeps.py`; the lock expires, so
a worker that dies mid-pass strands nothing: the next pass, anywhere, carries on), one pass:
  1. settle the trials whose job ended: optuna is told the final metric (complete), that the trial was pruned (the
     pruning callback in the job marked it, `jobs/sweep_pruning.py`) or that it failed;
  2. fail optuna trials that were asked for but never got a job (a driver that died between the two);
  3. start trials up to `parallelism` and `n_trials`: optuna samples a point (grid, random or TPE), and the trial's
     job is created and joined to the sweep in one transaction (not past the tenant's max_active_jobs; not once the
     sweep is cancelled), then its file validation is enqueued as the API would;
  4. when every trial has ended: the best completed trial, and the sweep's terminal status.
All state is in Redis: the sweep hash and optuna's study (JournalStorage over Redis), so any worker may run any pass.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import warnings
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalRedisBackend
from optuna.trial import TrialState as OptunaState
from pydantic import ValidationError
from redis import Redis

from ftjobs.client.models import JobStatus
from ftjobs.client.models.sweeps import (
    Choice,
    Direction,
    FloatRange,
    Sampler,
    SweepCreate,
    SweepStatus,
    TrialState,
    grid_values,
)
from ftjobs.core import keys
from ftjobs.core import sweeps as layout
from ftjobs.core.queue import JobQueue
from ftjobs.core.records import decode_hash, new_id
from ftjobs.core.settings import Settings
from ftjobs.core.tenants import TenantsSource

log = logging.getLogger("ftjobs.sweeps")
LOCK_TTL_S = 60.0  # a pass takes well under a second; a driver that died frees its sweeps after this
ENDED = frozenset({TrialState.complete, TrialState.pruned, TrialState.failed, TrialState.cancelled})
PRUNED_AT = "pruned_at_step"  # the optuna user attribute the pruning callback sets
QUOTA_MESSAGE = "waiting: the tenant has max_active_jobs jobs not yet finished"


def distribution(dist: Any) -> BaseDistribution:
    if isinstance(dist, Choice):
        return CategoricalDistribution(dist.values)
    if isinstance(dist, FloatRange):
        return FloatDistribution(dist.low, dist.high, log=dist.log, step=dist.step)
    return IntDistribution(dist.low, dist.high, log=dist.log, step=dist.step)


def storage_for(redis_url: str, tenant: str, sweep_id: str) -> JournalStorage:
    """The sweep's optuna storage: a journal in our Redis, under the sweep's own key prefix."""
    with warnings.catch_warnings():  # "experimental" since optuna 3.1: a warning per sweep in the worker log
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return JournalStorage(JournalRedisBackend(redis_url, prefix=layout.optuna_prefix(tenant, sweep_id)))


def pruner_for(req: SweepCreate) -> optuna.pruners.BasePruner:
    if req.pruner.type == "none":
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(
        n_startup_trials=req.pruner.n_startup_trials, n_warmup_steps=req.pruner.n_warmup_steps
    )


def sampler_for(req: SweepCreate, asked: int) -> optuna.samplers.BaseSampler:
    """A fresh sampler each pass (any worker may run it), seeded by the sweep's seed and the trials asked so far:
    the points differ from pass to pass, and a sweep replays the same way."""
    if req.sampler == Sampler.grid:  # the API checked that each distribution has a finite set of values
        space = {name: grid_values(dist) for name, dist in req.search_space.items()}
        return optuna.samplers.GridSampler(space, seed=req.seed)  # the seed orders the grid: the same every pass
    seed = req.seed * 1009 + asked
    if req.sampler == Sampler.random:
        return optuna.samplers.RandomSampler(seed=seed)
    startup = max(2, min(10, req.n_trials // 4))  # random points first, then TPE models the good ones
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup, constant_liar=True)


def open_study(storage: JournalStorage, sweep_id: str, req: SweepCreate, asked: int) -> optuna.Study:
    direction = req.resolved_direction
    return optuna.create_study(
        storage=storage,
        study_name=sweep_id,
        direction="minimize" if direction == Direction.minimize else "maximize",
        sampler=sampler_for(req, asked),
        pruner=pruner_for(req),
        load_if_exists=True,
    )


class SweepDriver(threading.Thread):
    """Advances every running sweep (see the module); safe to run in any number of workers at once."""

    def __init__(self, redis: Redis, settings: Settings) -> None:
        super().__init__(name="ftjobs-sweeps", daemon=True)
        self.redis = redis
        self.settings = settings
        self.queue = JobQueue(redis, settings)
        self.interval_s = max(0.5, min(settings.heartbeat_s, 5.0))
        self.tenants = TenantsSource(settings.tenants_file, settings.api_keys)
        self._storages: dict[tuple[str, str], JournalStorage] = {}
        self._stop_event = threading.Event()
        optuna.logging.set_verbosity(optuna.logging.WARNING)

    def run(self) -> None:
        while not self._stop_event.wait(self.interval_s):
            try:
                self.pass_once()
            except Exception:  # a Redis blip must not kill the thread; the next pass retries
                log.warning("sweep pass failed", exc_info=True)

    def stop(self) -> None:
        self._stop_event.set()

    def pass_once(self) -> int:
        """One pass over the running sweeps; returns how many it advanced."""
        advanced = 0
        for member in list(self.redis.smembers(layout.ACTIVE_SWEEPS_KEY)):  # type: ignore[arg-type]
            tenant, sweep_id = layout.parse_active_member(member)
            token = layout.acquire_lock(self.redis, tenant, sweep_id, LOCK_TTL_S)
            if token is None:
                continue  # another worker advances it now
            try:
                self.advance(tenant, sweep_id)
                advanced += 1
            except Exception:
                log.warning("could not advance sweep %s", sweep_id, exc_info=True)
            finally:
                layout.release_lock(self.redis, tenant, sweep_id, token)
        return advanced

    def storage(self, tenant: str, sweep_id: str) -> JournalStorage:
        key = (tenant, sweep_id)
        if key not in self._storages:
            self._storages[key] = storage_for(self.settings.redis_url, tenant, sweep_id)
        return self._storages[key]

    # ----------------------------------------------------------------- one pass over one sweep

    def advance(self, tenant: str, sweep_id: str) -> None:
        record = layout.read_sweep(self.redis, tenant, sweep_id)
        if record is None:
            self.redis.srem(layout.ACTIVE_SWEEPS_KEY, layout.active_member(tenant, sweep_id))
            return
        req = SweepCreate.model_validate(record["request"])
        trials: list[dict[str, Any]] = record["trials"]
        study = open_study(self.storage(tenant, sweep_id), sweep_id, req, len(trials))
        settled = [self.settle(tenant, study, req, t) for t in trials if t["state"] not in ENDED]
        running = record["status"] == SweepStatus.running
        fields: dict[str, Any] = {"trials": trials}
        if running:
            self.fail_orphans(study, trials)
            fields["message"] = self.start_trials(tenant, sweep_id, study, req, trials)
        finished = all(t["state"] in ENDED for t in trials) and (not running or len(trials) >= req.n_trials)
        if finished and running:
            fields.update(self.outcome(tenant, req, trials))
        if any(settled) or running:
            layout.write_sweep(self.redis, tenant, sweep_id, fields, unless_ended=running)
        if finished:  # after the write: a crash between the two leaves a sweep the next pass finds ended
            self.redis.srem(layout.ACTIVE_SWEEPS_KEY, layout.active_member(tenant, sweep_id))
            self._storages.pop((tenant, sweep_id), None)

    def settle(self, tenant: str, study: optuna.Study, req: SweepCreate, trial: dict[str, Any]) -> bool:
        """If the trial's job has ended: its state, value and steps, told to optuna too. Returns whether it had."""
        raw = self.redis.hgetall(keys.job_key(tenant, trial["job_id"]))
        job = decode_hash(raw) if raw else {"status": JobStatus.failed, "error": {"message": "its job is gone"}}
        status = JobStatus(job["status"])
        if not status.is_terminal:
            return False
        results, progress = job.get("results") or {}, job.get("progress") or {}
        trial["job_status"] = status.value
        trial["steps"] = results.get("steps", progress.get("step"))
        trial["total_steps"] = (job.get("resolved") or {}).get("total_steps", progress.get("total_steps"))
        frozen = study_trial(study, trial["optuna_number"])
        attrs = frozen.user_attrs if frozen is not None else {}
        pruned_at = attrs.get(PRUNED_AT)
        value = ((results.get("final") or {}) if status == JobStatus.succeeded else {}).get(req.metric)
        if status == JobStatus.succeeded and pruned_at is not None:
            trial.update(state=TrialState.pruned, pruned_at_step=pruned_at, value=attrs.get("pruned_value"))
            tell(study, trial, OptunaState.PRUNED)
        elif status == JobStatus.succeeded and value is not None:
            trial.update(state=TrialState.complete, value=value)
            tell(study, trial, OptunaState.COMPLETE, value)
        else:
            state = TrialState.cancelled if status == JobStatus.cancelled else TrialState.failed
            why = (job.get("error") or {}).get("message") or f"its job ended {status.value}"
            if status == JobStatus.succeeded:
                why = f"its results have no {req.metric!r}"
            trial.update(state=state, message=why)
            tell(study, trial, OptunaState.FAIL)
        return True

    def fail_orphans(self, study: optuna.Study, trials: list[dict[str, Any]]) -> None:
        """Optuna trials asked for but never joined to the sweep (a driver died between the two): failed, so a
        sampler does not wait on them."""
        ours = {t.get("optuna_number") for t in trials}
        for frozen in study.get_trials(deepcopy=False, states=(OptunaState.RUNNING,)):
            if frozen.number not in ours:
                finish(study, frozen.number, OptunaState.FAIL)

    def start_trials(
        self, tenant: str, sweep_id: str, study: optuna.Study, req: SweepCreate, trials: list[dict[str, Any]]
    ) -> str | None:
        """Start trials up to parallelism and n_trials; returns why the sweep waits, if it does."""
        space = {name: distribution(dist) for name, dist in req.search_space.items()}
        queue = self.settings.training_queue(req.job.resources.hardware)
        if queue is None:
            return f"no workers for hardware {req.job.resources.hardware!r}"
        max_active = self.max_active_jobs(tenant)
        while len(trials) < req.n_trials and sum(t["state"] not in ENDED for t in trials) < req.parallelism:
            if max_active is not None and layout.active_jobs(self.redis, tenant) >= max_active:
                return QUOTA_MESSAGE  # before asking optuna: a point asked for and never tried would be lost
            asked = study.ask(space)
            number = len(trials)
            trial: dict[str, Any] = {"number": number, "job_id": new_id("ftjob-"), "optuna_number": asked.number,
                                     "params": asked.params, "state": TrialState.queued.value}  # fmt: skip
            try:
                request = layout.trial_request(req.job, asked.params, sweep_id, number)
            except ValidationError as e:  # a point the API's checks of the bounds could not foresee
                finish(study, asked.number, OptunaState.FAIL)
                trial.update(job_id=None, state=TrialState.failed, message=f"no valid job: {e.errors()[0]['msg']}")
                trials.append(trial)
                continue
            created = layout.add_trial(self.redis, tenant, sweep_id, trial, request, queue, max_active)
            if created != "created":  # the sweep was cancelled, or a job of the tenant was created, meanwhile
                finish(study, asked.number, OptunaState.FAIL)
                return QUOTA_MESSAGE if created == "quota" else None
            trials.append(trial)
            self.queue.enqueue_validation(tenant, trial["job_id"], queue=queue)
            log.info("sweep %s: trial %d is job %s with %s", sweep_id, number, trial["job_id"], asked.params)
        return None

    def max_active_jobs(self, tenant: str) -> int | None:
        """The tenant's max_active_jobs as the tenants file says now: each trial counts as a job."""
        return self.tenants.current().limits(tenant).max_active_jobs

    def outcome(self, tenant: str, req: SweepCreate, trials: list[dict[str, Any]]) -> dict[str, Any]:
        """The best completed trial (its artifacts from its job) and the sweep's terminal status."""
        complete = [t for t in trials if t["state"] == TrialState.complete]
        done = {"finished_at": int(time.time())}
        if not complete:
            return {**done, "status": SweepStatus.failed.value, "message": "no trial completed"}
        sign = 1 if req.resolved_direction == Direction.minimize else -1
        best = min(complete, key=lambda t: sign * t["value"])
        raw = self.redis.hget(keys.job_key(tenant, best["job_id"]), "artifacts")
        artifacts = json.loads(raw) if raw else []
        summary = {k: best[k] for k in ("number", "job_id", "params", "value")}
        message = f"best: trial {best['number']} ({req.metric} {best['value']:.4g})"
        return {**done, "status": SweepStatus.succeeded.value, "best": {**summary, "artifacts": artifacts},
                "message": message}  # fmt: skip


def study_trial(study: optuna.Study, number: int) -> optuna.trial.FrozenTrial | None:
    for frozen in study.get_trials(deepcopy=False):
        if frozen.number == number:
            return frozen
    return None


def tell(study: optuna.Study, trial: dict[str, Any], state: OptunaState, value: float | None = None) -> None:
    """Tell optuna how a trial ended (once: a second pass after a lost write finds it told already)."""
    frozen = study_trial(study, trial["optuna_number"])
    if frozen is None or frozen.state != OptunaState.RUNNING:
        return
    finish(study, trial["optuna_number"], state, value if state == OptunaState.COMPLETE else None)


def finish(study: optuna.Study, number: int, state: OptunaState, value: float | None = None) -> None:
    """`study.tell`; the GridSampler's "grid done" stop, meant for `study.optimize`, is no error here (the state
    is stored whatever the sampler says)."""
    try:
        study.tell(number, value, state=state)
    except RuntimeError as e:
        if "Study.stop" not in str(e):
            raise
