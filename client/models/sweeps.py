"""Hyperparameter sweeps: the request (`SweepCreate`), its search space, and the sweep the API returns (`Sweep`).

A sweep runs `n_trials` ordinary jobs (its trials), each the base `job` request with one point of the search space
applied; optuna samples the points (grid, random or TPE) and prunes bad trials early (median pruning).
"""

from __future__ import annotations

import math
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, model_validator

from ftjobs.client.models.common import STRICT, Page
from ftjobs.client.models.jobs import Artifact, JobCreate, JobStatus

SWEEP_ID_PATTERN = r"^sweep-[0-9a-f]{20}$"
# `hyperparameters.<field>` or `method.<field>` of the base job request (e.g. `method.r` for a LoRA rank).
PARAM_PATTERN = r"^(hyperparameters|method)\.[a-z][a-z0-9_]{0,63}$"
MAX_TRIALS = 200
MAX_CHOICES = 64
MAX_GRID_VALUES = 1000  # values of one parameter on a grid


class FloatRange(BaseModel):
    """A float between `low` and `high` (inclusive); `log`: sampled log-uniformly (learning rates)."""

    model_config = STRICT
    type: Literal["float"] = "float"
    low: float
    high: float
    log: bool = Field(default=False, description="Sample on a log scale (needs low > 0).")
    step: float | None = Field(default=None, gt=0, description="Discretise: low, low+step, ... (not with log).")

    @model_validator(mode="after")
    def _bounds(self) -> FloatRange:
        check_bounds(self.low, self.high, self.log, self.step)
        return self


class IntRange(BaseModel):
    """An integer between `low` and `high` (inclusive), every `step`; `log`: sampled log-uniformly."""

    model_config = STRICT
    type: Literal["int"] = "int"
    low: int
    high: int
    log: bool = Field(default=False, description="Sample on a log scale (needs low > 0, step 1).")
    step: int = Field(default=1, ge=1)

    @model_validator(mode="after")
    def _bounds(self) -> IntRange:
        check_bounds(self.low, self.high, self.log, None if self.step == 1 else self.step)
        return self


class Choice(BaseModel):
    """One of a few values (a batch size, a scheduler name)."""

    model_config = STRICT
    type: Literal["categorical"] = "categorical"
    values: list[float | int | str | bool] = Field(min_length=1, max_length=MAX_CHOICES)

    @model_validator(mode="after")
    def _distinct(self) -> Choice:
        if len({repr(v) for v in self.values}) != len(self.values):
            raise ValueError("values must be distinct")
        return self


def check_bounds(low: float, high: float, log: bool, step: float | None) -> None:
    """ValueError (naming the bound) for a range optuna cannot sample."""
    if low > high:
        raise ValueError(f"low ({low}) must not be above high ({high})")
    if log and low <= 0:
        raise ValueError(f"a log range needs low > 0 (got {low})")
    if log and step is not None:
        raise ValueError("a log range cannot have a step")


def grid_count(dist: FloatRange | IntRange | Choice) -> int | None:
    """How many values a grid takes for the distribution; None when it has no finite set (a float range without a
    step)."""
    if isinstance(dist, Choice):
        return len(dist.values)
    if isinstance(dist, IntRange):
        return (dist.high - dist.low) // dist.step + 1
    if dist.step is None:
        return None
    count = (dist.high - dist.low) / dist.step + 1e-9
    return math.floor(count) + 1 if math.isfinite(count) else 2**63  # a span past the float range: "too many"


def grid_values(dist: FloatRange | IntRange | Choice) -> list[Any]:
    """Every value a grid takes for the distribution (check `grid_count` first: a range may have millions)."""
    if isinstance(dist, Choice):
        return list(dist.values)
    if isinstance(dist, IntRange):
        return list(range(dist.low, dist.high + 1, dist.step))
    assert dist.step is not None
    return [round(dist.low + i * dist.step, 12) for i in range(grid_count(dist) or 0)]


Distribution = Annotated[FloatRange | IntRange | Choice, Field(discriminator="type")]
ParamName = Annotated[str, Field(pattern=PARAM_PATTERN)]


class Sampler(StrEnum):
    grid = "grid"  # every combination once (ranges need a step; n_trials at most the grid's size)
    random = "random"
    tpe = "tpe"  # Tree-structured Parzen Estimator: random for the first trials, then where good trials were


class Direction(StrEnum):
    minimize = "minimize"
    maximize = "maximize"


class Pruner(BaseModel):
    """Median pruning: a trial whose metric at an evaluation is worse than the median of the completed trials' at the
    same step is stopped there."""

    model_config = STRICT
    type: Literal["median", "none"] = "median"
    n_startup_trials: int = Field(default=2, ge=0, le=MAX_TRIALS, description="Completed trials before any pruning.")
    n_warmup_steps: int = Field(default=0, ge=0, description="Steps of a trial before it may be pruned.")


class SweepCreate(BaseModel):
    """Body of `POST /v1/sweeps`."""

    model_config = STRICT
    job: JobCreate = Field(description="The base job request (the body of `POST /v1/jobs`) every trial starts from.")
    search_space: dict[ParamName, Distribution] = Field(
        min_length=1,
        max_length=16,
        description="What each trial varies: `hyperparameters.<field>` (learning_rate, n_epochs, batch_size, "
        "weight_decay, warmup_ratio ...) or `method.<field>` (LoRA r, alpha, dropout ...) -> a float or int range "
        "or a list of values.",
    )
    metric: str = Field(
        default="eval_loss",
        pattern=r"^[A-Za-z0-9_./-]{1,64}$",
        description="What a trial is scored on: a key of the job's `results.final` and of its evaluations "
        "(`eval_loss`, `accuracy`, `f1`, `perplexity` ...). Needs validation data.",
    )
    direction: Direction | None = Field(
        default=None, description="Whether lower or higher is better (default: minimize for losses, else maximize)."
    )
    sampler: Sampler = Sampler.tpe
    n_trials: int = Field(default=8, ge=1, le=MAX_TRIALS, description="Trials (jobs) in all.")
    parallelism: int = Field(default=2, ge=1, le=32, description="Trials queued or running at once.")
    pruner: Pruner = Field(default_factory=Pruner)
    seed: int = Field(default=0, ge=0, le=2**31 - 1, description="Seeds the sampler.")

    @property
    def resolved_direction(self) -> Direction:
        if self.direction is not None:
            return self.direction
        lower_better = "loss" in self.metric or self.metric == "perplexity"
        return Direction.minimize if lower_better else Direction.maximize


class SweepStatus(StrEnum):
    running = "running"  # trials are queued, running, or still to come
    succeeded = "succeeded"  # every trial ended and at least one completed: `best` is set
    failed = "failed"  # every trial ended and none completed
    cancelled = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self is not SweepStatus.running


class TrialState(StrEnum):
    queued = "queued"  # its job waits (validating_files, queued or paused)
    running = "running"
    complete = "complete"  # the job succeeded: `value` is its final metric
    pruned = "pruned"  # stopped early by the pruner; its job ends `succeeded` with fewer steps
    failed = "failed"  # its job failed (or lacked the metric)
    cancelled = "cancelled"


class SweepTrial(BaseModel):
    """One trial: its job, the point of the search space it trained with, and how it scored."""

    number: int = Field(description="0, 1, ... in the order trials were started.")
    job_id: str | None = Field(default=None, description="Its job (none when its point made no valid job).")
    state: TrialState
    params: dict[str, Any]
    value: float | None = Field(default=None, description="The metric: final (complete) or where it was pruned.")
    steps: int | None = Field(default=None, description="Optimizer steps trained (fewer for a pruned trial).")
    total_steps: int | None = None
    pruned_at_step: int | None = None
    job_status: JobStatus | None = None
    message: str | None = Field(default=None, description="Why a trial failed.")


class SweepBest(BaseModel):
    """The best completed trial and where its artifacts are (`GET /v1/jobs/{job_id}/artifacts`)."""

    number: int
    job_id: str
    params: dict[str, Any]
    value: float
    artifacts: list[Artifact] = Field(default_factory=list)


class Sweep(BaseModel):
    """A sweep as the API returns it: the request, every trial so far and the best one."""

    id: str
    object: Literal["sweep"] = "sweep"
    tenant: str
    status: SweepStatus
    created_at: int
    finished_at: int | None = None
    request: SweepCreate = Field(description="As submitted.")
    direction: Direction = Field(description="As resolved.")
    trials: list[SweepTrial] = Field(default_factory=list)
    best: SweepBest | None = None
    cancel_requested: bool = False
    message: str | None = Field(default=None, description="Why the sweep waits (a quota) or how it ended.")


class SweepList(Page[Sweep]):
    """A page of sweeps (`GET /v1/sweeps`), newest first."""
