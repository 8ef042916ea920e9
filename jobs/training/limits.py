"""The tenant's per-job limits, enforced while a job trains: optimizer steps, training tokens, training wall time.

The API already refuses a request whose steps it can count (`service/job_checks.py`); only the worker knows the
rest (steps from the prepared data, tokens, time). A job that passes a limit stops at the first step end past it
and fails with `job_limit_exceeded`, naming the limit and the value reached. Its events and metric points stay;
it keeps no weights and no checkpoint: a failed job is never resumed, so a checkpoint would only hold storage.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from ftjobs.core.settings import Settings
from ftjobs.core.tenants import TenantLimits, TenantsSource
from ftjobs.jobs.errors import JobLimitExceeded

OVER_STEPS = "max_job_steps"
OVER_TOKENS = "max_job_tokens"
OVER_WALL = "max_job_wall_s"


def tenant_limits(settings: Settings, tenant: str) -> TenantLimits:
    """The tenant's limits as the deployment's tenants file says now (deployment defaults otherwise)."""
    return TenantsSource(settings.tenants_file, settings.api_keys).current().limits(tenant)


def check_planned_steps(limits: TenantLimits, total_steps: int) -> None:
    """Before training: a schedule longer than max_job_steps fails at once rather than at the limit."""
    if limits.max_job_steps is not None and total_steps > limits.max_job_steps:
        raise JobLimitExceeded(
            f"the job would train {total_steps} optimizer steps; this tenant's limit max_job_steps is "
            f"{limits.max_job_steps}. Lower hyperparameters.max_steps or n_epochs, or raise the batch size.",
            param="hyperparameters.max_steps",
        )


class LimitsCallback(TrainerCallback):
    """Stops training at the first step end past a limit; `exceeded` is then the failure train.py raises.

    Wall time counts this attempt's training plus the earlier attempts' up to the checkpoint it resumed
    (`earlier_seconds`, restored by jobs/training/checkpoints.py into the ReportCallback): a job cannot
    outrun its limit by being requeued. Tokens are the Trainer's count of non-padding input tokens, which a
    resumed Trainer restores from its checkpoint."""

    def __init__(self, limits: TenantLimits, earlier_seconds: Callable[[], float] = lambda: 0.0) -> None:
        self.limits = limits
        self.earlier_seconds = earlier_seconds  # read at train begin: a resume has set it by then
        self.exceeded: JobLimitExceeded | None = None
        self._started = time.monotonic()
        self._before = 0.0

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any) -> None:
        self._started = time.monotonic()
        self._before = float(self.earlier_seconds())

    @property
    def train_seconds(self) -> float:
        return self._before + time.monotonic() - self._started

    def over(self, state: TrainerState) -> JobLimitExceeded | None:
        """The first limit the run has passed, as the failure to report; None while within every limit."""
        steps, tokens, seconds = state.global_step, int(state.num_input_tokens_seen or 0), self.train_seconds
        finished = bool(state.max_steps) and steps >= state.max_steps  # the last step: nothing left to stop
        limits = self.limits
        if limits.max_job_steps is not None and steps > limits.max_job_steps:
            return JobLimitExceeded(
                f"{OVER_STEPS}: the job reached {steps} optimizer steps; this tenant's limit is "
                f"{limits.max_job_steps}",
                param="hyperparameters.max_steps",
            )
        # tokens past the limit fail even at the last step; reaching it exactly fails only with steps left
        cap = limits.max_job_tokens
        if cap is not None and (tokens > cap or (tokens == cap and not finished)):
            return JobLimitExceeded(
                f"{OVER_TOKENS}: the job reached {tokens} training tokens at step {steps} of {state.max_steps} "
                f"(limit {cap}); train on fewer rows or epochs, or a shorter max_seq_length",
                param="hyperparameters",
            )
        if limits.max_job_wall_s is not None and seconds >= limits.max_job_wall_s and not finished:
            return JobLimitExceeded(
                f"{OVER_WALL}: the job trained for {seconds:.1f} s and reached step {steps} of {state.max_steps} "
                f"(limit {limits.max_job_wall_s:g} s); train fewer steps",
                param="hyperparameters",
            )
        return None

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any) -> None:
        if self.exceeded is None:
            self.exceeded = self.over(state)
        if self.exceeded is not None:
            # stop here: no evaluation, and no checkpoint (a failed job is not resumed)
            control.should_training_stop = True
            control.should_evaluate = control.should_save = False

    def on_epoch_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any) -> None:
        if self.exceeded is not None:
            control.should_evaluate = control.should_save = False
