"""A sweep trial's side of pruning: each evaluation's metric goes to its optuna trial, and when the sweep's pruner
(median pruning) says the trial is worse than the completed ones were at the same step, training stops there.

A pruned trial's job then ends like an early-stopped one: `succeeded`, with the weights it has, fewer steps than
planned, a warning event saying where and why it was pruned, and `results.pruned` (`pruned_outcome`: the sweep, the
metric, its value and the step); the sweep lists the trial as `pruned` (the driver reads the `pruned_at_step`
attribute set here: `jobs/sweep_driver.py`).
"""

from __future__ import annotations

import logging
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from ftjobs.client.models import EventLevel, JobCreate
from ftjobs.client.models.sweeps import SweepCreate
from ftjobs.core import sweeps as layout
from ftjobs.core.settings import Settings
from ftjobs.jobs.evaluation.metrics import eval_values, summary
from ftjobs.jobs.outputs.results import PrunedOutcome
from ftjobs.jobs.report import Reporter

log = logging.getLogger("ftjobs.sweeps")


class PruningCallback(TrainerCallback):
    """Reports every evaluation after step 0 to the trial; stops training when the pruner says so."""

    def __init__(self, trial: Any, sweep_id: str, metric: str, reporter: Reporter) -> None:
        self.trial = trial  # an optuna.trial.Trial
        self.sweep_id = sweep_id
        self.metric = metric
        self.reporter = reporter
        self.reported: set[int] = set()
        self.pruned_at: int | None = None
        self.pruned_value: float | None = None

    def on_evaluate(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        metrics: dict[str, Any] | None = None,
        **kw: Any,
    ) -> None:
        step = state.global_step
        if step == 0 or step in self.reported or self.pruned_at is not None:
            return  # the baseline tells nothing of the trial's settings; the final evaluation repeats the last step's
        value = summary(eval_values(metrics or {}, causal=True)).get(self.metric)
        if value is None:
            return
        self.reported.add(step)
        try:
            self.trial.report(value, step)
            pruned = self.trial.should_prune()
            if pruned:
                self.trial.set_user_attr("pruned_value", value)
                self.trial.set_user_attr("pruned_at_step", step)
        except Exception:  # the sweep's storage unreachable: the trial trains on, unpruned
            log.warning("could not report step %d to sweep %s", step, self.sweep_id, exc_info=True)
            return
        if pruned:
            self.pruned_at, self.pruned_value = step, float(value)
            control.should_training_stop = True
            self.reporter.event(
                f"pruned by sweep {self.sweep_id} at step {step}: {self.metric} {value:.4g} is worse than the median "
                "of the completed trials at this step; training stops here",
                level=EventLevel.warning,
                data={"sweep_id": self.sweep_id, "step": step, "metric": self.metric, "value": value},
            )


def pruned_outcome(callbacks: list[Any]) -> PrunedOutcome | None:
    """`results.pruned` of a run whose Trainer holds these callbacks: where its sweep pruned it, or None."""
    for cb in callbacks:
        if isinstance(cb, PruningCallback) and cb.pruned_at is not None and cb.pruned_value is not None:
            return PrunedOutcome(sweep_id=cb.sweep_id, metric=cb.metric, value=cb.pruned_value, at_step=cb.pruned_at)
    return None


def pruning_callbacks(settings: Settings, reporter: Reporter, request: JobCreate) -> list[Any]:
    """[PruningCallback] for a job that its sweep lists as a trial and whose sweep prunes; [] for any other job."""
    redis = reporter.redis
    found = layout.trial_of_job(redis, reporter.tenant, reporter.job_id, request.model_dump(mode="json"))
    if found is None or request.resources.processes > 1:  # the ranks of a multi-process job would each report
        return []
    sweep_id, number = found
    record = layout.read_sweep(redis, reporter.tenant, sweep_id)
    if record is None:
        return []
    sweep = SweepCreate.model_validate(record["request"])
    if sweep.pruner.type == "none":
        return []
    trial = next(t for t in record["trials"] if t["number"] == number)
    import optuna  # the worker's extra; only a trial pays for the import

    from ftjobs.jobs.sweep_driver import open_study, storage_for

    study = open_study(storage_for(settings.redis_url, reporter.tenant, sweep_id), sweep_id, sweep, 0)
    frozen = study.get_trials(deepcopy=False)
    trial_id = next(f._trial_id for f in frozen if f.number == trial["optuna_number"])
    return [PruningCallback(optuna.trial.Trial(study, trial_id), sweep_id, sweep.metric, reporter)]
