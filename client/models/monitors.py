"""Monitors (`/v1/monitors`): a finished job re-evaluated on a schedule on the newest upload of a dataset, compared
with its own final results; a drop past a threshold raises `monitor.degraded` and can start a retraining job."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field

from ftjobs.client.models.common import JOB_ID_PATTERN, STRICT, Page
from ftjobs.client.models.training import Hyperparameters

MONITOR_ID_PATTERN = r"^mon-[0-9a-f]{20}$"
MonitorRunStatus = Literal["evaluating", "ok", "degraded", "failed", "skipped"]


class MonitorCreate(BaseModel):
    """Body of `POST /v1/monitors`."""

    model_config = STRICT
    job_id: str = Field(pattern=JOB_ID_PATTERN, description="The succeeded job to watch.")
    dataset: str = Field(
        min_length=1,
        max_length=255,
        description="A dataset name: the `filename` of uploaded files. Each run evaluates on the newest file of this "
        "tenant with that name, so uploading a new version under the same name is what the next run sees.",
    )
    schedule: str = Field(
        min_length=1,
        max_length=100,
        description="When to run: a cron expression (`0 * * * *`: hourly; the worker's local time). Run one now "
        "with `POST /v1/monitors/{id}/run`.",
    )
    metric: str | None = Field(
        default=None,
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9_./-]+$",
        description="A key of the job's results.final (default: `f1` for classification, `eval_loss` otherwise); "
        "names with `loss` or `perplexity` are lower-is-better.",
    )
    threshold: float = Field(
        default=0.05,
        ge=0,
        le=1e6,
        description="The largest drop (absolute, in the metric's units) that is still `ok`; more is `degraded`.",
    )
    retrain: bool = Field(
        default=False,
        description="On `degraded`, start a job that continues from the watched job (parent_job_id) on the new file, "
        "with the job's hyperparameters (or `retrain_hyperparameters`); forgetting is measured as usual.",
    )
    retrain_hyperparameters: Hyperparameters | None = Field(
        default=None, description="The retraining job's hyperparameters (default: the watched job's)."
    )
    metadata: dict[Annotated[str, Field(max_length=64)], Annotated[str, Field(max_length=512)]] = Field(
        default_factory=dict, max_length=8, description="Free key/value pairs kept on the monitor."
    )


class MonitorRun(BaseModel):
    """One run of a monitor: the evaluation it started and, once that finished, the metric and the decision."""

    id: str
    object: Literal["monitor.run"] = "monitor.run"
    monitor_id: str
    trigger: Literal["schedule", "manual"]
    created_at: float = Field(description="Unix seconds when the run started its evaluation.")
    finished_at: float | None = None
    status: MonitorRunStatus = Field(
        description="`evaluating` until the evaluation job ends; then `ok` or `degraded`, or `failed` (no file, or "
        "the evaluation job failed or was cancelled: `error`); `skipped`: a scheduled run that started no "
        "evaluation because the tenant was at a limit (`reason`, `warning`)."
    )
    file_id: str | None = Field(default=None, description="The newest file of the dataset when the run started.")
    evaluation_job_id: str | None = None
    metric: str
    reference: float = Field(description="The watched job's final value of the metric.")
    value: float | None = Field(default=None, description="The metric on the new file.")
    drop: float | None = Field(default=None, description="How much worse than `reference` (negative: better).")
    retrain_job_id: str | None = Field(default=None, description="The retraining job a `degraded` run started.")
    reason: Literal["max_active_jobs"] | None = Field(
        default=None,
        description="The tenant limit that kept a job from starting: the run's evaluation (`skipped`), or a "
        "`degraded` run's retraining job (then no `retrain_job_id`).",
    )
    warning: str | None = Field(default=None, description="What was not started and why, for people.")
    error: str | None = None


class Monitor(BaseModel):
    """A monitor as the API returns it."""

    id: str
    object: Literal["monitor"] = "monitor"
    tenant: str
    created_at: float
    job_id: str
    dataset: str
    schedule: str
    metric: str
    higher_is_better: bool
    reference: float = Field(description="The watched job's results.final[metric]: what each run compares with.")
    threshold: float
    retrain: bool
    retrain_hyperparameters: Hyperparameters | None = None
    metadata: dict[str, str] = Field(default_factory=dict)
    next_run_at: float | None = Field(default=None, description="Unix seconds of the next scheduled run.")
    last_run: MonitorRun | None = None


class MonitorList(Page[Monitor]):
    """A tenant's monitors, newest first."""


class MonitorRunList(Page[MonitorRun]):
    """A monitor's runs, newest first."""


class MonitorDeleted(BaseModel):
    object: Literal["monitor"] = "monitor"
    id: str
    deleted: Literal[True] = True
