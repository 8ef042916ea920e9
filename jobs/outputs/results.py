"""A job's results, typed: what the job record's `results` field, metrics.json and the model card report."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

Scores = dict[str, float]  # one evaluation: eval_loss, accuracy, f1, f1/<label>, bleu, rouge1 ... (metrics.summary)


@dataclass
class EarlyStoppingOutcome:
    """Where early stopping ended a run and which step's weights it kept."""

    metric: str  # the Trainer's name: eval_loss, eval_f1 ...
    best_metric: float | None
    best_step: int | None
    stopped_at_step: int
    stopped_early: bool  # before the planned total_steps


@dataclass
class PrunedOutcome:
    """Where a sweep's pruner stopped this job (a trial): the step, and the metric there that the median beat."""

    sweep_id: str
    metric: str  # the sweep's metric (a key of results.final)
    value: float  # at `at_step`, the evaluation the pruner judged
    at_step: int


@dataclass
class Results:
    """Everything a run measured; a field is None (and left out of the JSON) when the run did not measure it."""

    data: dict[str, Any] | None = None  # the data preparation report, when the request asked for any step
    resumed_from_step: int | None = None  # this attempt resumed a lost attempt's checkpoint at this step
    baseline: Scores | None = None  # the untrained model on the validation set
    steps: int | None = None  # optimizer steps of the whole run
    train_seconds: float | None = None  # every attempt's, up to where this one resumed
    tokens_seen: int | None = None  # non-padding input tokens, every attempt's
    train_loss: float | None = None  # mean over every step of the run
    train_loss_first: float | None = None  # the first and last logged train loss
    train_loss_last: float | None = None
    final: Scores | None = None  # the trained model (the best kept one under early stopping)
    generation: dict[str, Any] | None = None  # the eval_generation options behind bleu/rouge, and examples scored
    confusion_matrix: dict[str, Any] | None = None  # classification: {labels, baseline, final}
    groups: dict[str, Any] | None = None  # per-group metrics when the request names a group_field
    early_stopping: EarlyStoppingOutcome | None = None
    pruned: PrunedOutcome | None = None  # a sweep's trial that its pruner stopped early (jobs/sweep_pruning.py)
    forgetting: dict[str, float] | None = None  # reference loss before/after (diagnostics.forgetting)
    diagnostics: list[dict[str, Any]] | None = None  # overfitting/underfitting flags (diagnostics.diagnose)

    def as_json(self) -> dict[str, Any]:
        """The record's `results`: the measured fields only, in this order (nested None values stay)."""
        return {name: value for name, value in asdict(self).items() if value is not None}
