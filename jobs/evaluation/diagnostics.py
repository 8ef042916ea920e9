"""What a run's curves say: overfitting (or instability) judged on the task metric, underfitting; forgetting."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

from ftjobs.client.models import Task

OVERFIT_RISE = 0.10  # validation loss 10% above its best, while the train loss kept falling: overfitting
UNDERFIT_DROP = 0.05  # train loss fell by less than 5% over the run: underfitting
METRIC_DROP = 0.01  # a task metric (0-1) this far below its best at the end: the run got worse at the task
SMOOTH_WINDOW = 5  # logged train losses in the rolling median: one noisy batch is not the curve
LOWER_IS_BETTER = frozenset({"loss", "perplexity"})

Point = tuple[int, float]  # (optimizer step, value)


def tracked_metric(task: Task | str, early_stopping: Any = None) -> tuple[str, bool]:
    """The metric a job is judged on and whether higher is better: early_stopping's, else macro f1 (classification)
    or the validation loss (causal_lm, seq2seq, dpo)."""
    if early_stopping is not None:
        name = str(getattr(early_stopping, "metric", early_stopping)).removeprefix("eval_")
        name = "loss" if name == "perplexity" else name  # the Trainer records the loss; exp() keeps its order
        return name, name not in LOWER_IS_BETTER
    if Task(task) == Task.classification:
        return "f1", True
    return "loss", False


def smoothed(values: Sequence[float], window: int = SMOOTH_WINDOW) -> list[float]:
    """A centred rolling median: each value beside its neighbours (the window shrinks at the ends)."""
    half = window // 2
    return [statistics.median(values[max(0, i - half) : i + half + 1]) for i in range(len(values))]


def points(history: Sequence[dict[str, Any]], name: str) -> list[Point]:
    """(step, value) of `name` in a metric history ({"step", "values"} points)."""
    return [(h["step"], float(h["values"][name])) for h in history if name in h.get("values", {})]


def best_point(curve: Sequence[Point], greater: bool) -> Point:
    """The best (step, value); on a tie the latest, so a metric that came back to its best still counts as best."""
    sign = 1.0 if greater else -1.0
    return max(reversed(curve), key=lambda p: sign * p[1])


def diagnose(
    train_history: list[dict[str, Any]],
    eval_history: list[dict[str, Any]],
    kept_step: int | None = None,
    metric: str = "loss",
    greater_is_better: bool = False,
) -> list[dict[str, Any]]:
    """Flags on the run's curves: overfitting (the task metric `metric` ended worse than its best while the smoothed
    train loss fell; for a loss-tracked task: the validation loss rose from its best) and underfitting (the train
    loss barely moved); `kept_step`: early stopping kept that step's weights."""
    train = points(train_history, "loss")
    found = (_underfitting(train), _overfitting(train, eval_history, kept_step, metric, greater_is_better))
    return [flag for flag in found if flag is not None]


def _underfitting(train: list[Point]) -> dict[str, Any] | None:
    if len(train) < 2:
        return None
    k = max(1, len(train) // 10)  # the median of the first and the last tenth: not one noisy batch each
    first = statistics.median(v for _, v in train[:k])
    last = statistics.median(v for _, v in train[-k:])
    drop = (first - last) / first if first > 0 else 0.0
    if drop >= UNDERFIT_DROP:
        return None
    return {
        "flag": "underfitting",
        "message": (
            f"The training loss barely moved ({first:.4g} -> {last:.4g}, {100 * drop:.1f}% lower): "
            "the model is not learning the data. Try a higher learning rate, more epochs, or a larger "
            "LoRA rank; check that the labels carry a learnable signal."
            if drop >= 0
            else f"The training loss rose ({first:.4g} -> {last:.4g}, {-100 * drop:.1f}% higher): the "
            "model is not learning the data. With only a few steps this may be noise; otherwise try a "
            "lower learning rate, and check that the labels carry a learnable signal."
        ),
        "numbers": {"train_loss_first": first, "train_loss_last": last, "relative_drop": round(drop, 4)},
    }


def _overfitting(
    train: list[Point], eval_history: list[dict[str, Any]], kept_step: int | None, metric: str, greater: bool
) -> dict[str, Any] | None:
    losses = points(eval_history, "loss")
    judged = losses if metric == "loss" else points(eval_history, metric)
    if len(judged) < 2 or not train:
        return None
    smooth = list(zip([s for s, _ in train], smoothed([v for _, v in train]), strict=True))
    best_step, best = best_point(judged, greater)
    last_step, last = judged[-1]
    at_best = [v for s, v in smooth if s <= best_step] or [smooth[0][1]]
    train_fell = smooth[-1][1] < at_best[-1]
    numbers: dict[str, Any] = {"metric": metric, "train_loss_at_best": at_best[-1], "train_loss_last": smooth[-1][1]}
    loss_words = ""
    if len(losses) >= 2:
        loss_step, loss_best = best_point(losses, greater=False)
        rise = (losses[-1][1] - loss_best) / loss_best if loss_best > 0 else 0.0
        numbers.update(best_eval_loss=loss_best, best_step=loss_step, last_eval_loss=losses[-1][1])
        numbers["relative_rise"] = round(rise, 4)
        if metric != "loss" and rise > OVERFIT_RISE:
            loss_words = f" and the validation loss rose {100 * rise:.0f}% from its best"
    if metric == "loss":
        worse = numbers["relative_rise"] > OVERFIT_RISE
        what = (
            f"The validation loss rose {100 * numbers['relative_rise']:.0f}% from its best ({best:.4g} at step "
            f"{best_step}) to {last:.4g}"
        )
    else:
        gap = (best - last) if greater else (last - best)
        worse = gap > METRIC_DROP
        numbers.update(best_metric=best, best_metric_step=best_step, last_metric=last, metric_drop=round(gap, 4))
        when = "before training" if best_step == 0 else f"at step {best_step}"
        what = (
            f"Validation {metric} was best {when} ({best:.4g}) and ended at {last:.4g} (step {last_step}){loss_words}"
        )
    if best_step >= last_step or not worse:
        return None  # the task metric held or improved to the end: a rising loss alone is no reason to stop
    numbers["stop_at_step"] = best_step
    keep = (
        f"Early stopping kept the weights of step {kept_step}."
        if kept_step is not None
        else f"Stop at step {best_step}: set early_stopping with metric {metric} (it keeps the best weights)"
    )
    if not train_fell:  # worse at the task without fitting the training data better: not memorisation
        return {
            "flag": "unstable",
            "message": f"{what} while the smoothed training loss did not fall ({at_best[-1]:.4g} at the best step, "
            f"{smooth[-1][1]:.4g} at the end): training became unstable. "
            + (keep if kept_step is not None else f"{keep}, or lower the learning rate."),
            "numbers": numbers,
        }
    return {
        "flag": "overfitting",
        "message": f"{what} while the training loss kept falling: the model is memorising the training data. "
        + (keep if kept_step is not None else f"{keep}, or use fewer epochs, more data, weight_decay or dropout."),
        "numbers": numbers,
    }


def summary(eval_history: list[dict[str, Any]], metric: str = "loss", greater_is_better: bool = False) -> str | None:
    """One plain sentence on the validation curve of `metric` (the model card's diagnostics); None without one."""
    judged = points(eval_history, metric)
    if len(judged) < 2:
        return None
    best_step, best = best_point(judged, greater_is_better)
    last_step, last = judged[-1]
    first_step, first = judged[0]
    sentence = f"Validation {metric} went {first:.4g} (step {first_step}) -> {last:.4g} (step {last_step})"
    if best == first == last:
        sentence += ": it did not change"
    elif best_step == last_step:
        sentence += ", its best at the last evaluation: the run was still improving; more steps may help"
    else:
        sentence += f", its best {best:.4g} at step {best_step}"
    losses = points(eval_history, "loss")
    if metric != "loss" and len(losses) >= 2:
        loss_step, loss_best = best_point(losses, greater=False)
        rise = (losses[-1][1] - loss_best) / loss_best if loss_best > 0 else 0.0
        if rise > OVERFIT_RISE and best_step == last_step:
            sentence += (
                f". The validation loss rose {100 * rise:.0f}% from its best (step {loss_step}) while {metric} "
                "still improved: the model grew more confident on the examples it gets wrong, yet gets more of "
                "them right; no need to stop early"
            )
    return sentence + "."


def forgetting(before: float, after: float) -> dict[str, float]:
    """The reference loss before and after training, and how much it rose (catastrophic forgetting)."""
    return {
        "reference_loss_before": round(before, 6),
        "reference_loss_after": round(after, 6),
        "increase": round(after - before, 6),
    }
