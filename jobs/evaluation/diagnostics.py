"""What a finished run's numbers say went wrong: overfitting, underfitting (loss curves), forgetting."""

from __future__ import annotations

from typing import Any

OVERFIT_RISE = 0.10  # validation loss 10% above its best, while the train loss kept falling: overfitting
UNDERFIT_DROP = 0.05  # train loss fell by less than 5% over the run: underfitting


def diagnose(
    train_history: list[dict[str, Any]], eval_history: list[dict[str, Any]], kept_step: int | None = None
) -> list[dict[str, Any]]:
    """Flags on the loss curves of the run: overfitting (validation loss rose from its best while the train
    loss fell) and underfitting (the train loss barely moved); `kept_step`: early stopping kept that step."""
    flags: list[dict[str, Any]] = []
    train = [(h["step"], h["values"]["loss"]) for h in train_history if "loss" in h["values"]]
    evals = [(h["step"], h["values"]["loss"]) for h in eval_history if "loss" in h["values"]]
    if len(train) >= 2:
        first, last = train[0][1], train[-1][1]
        drop = (first - last) / first if first > 0 else 0.0
        if drop < UNDERFIT_DROP:
            flags.append(
                {
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
            )
    if len(evals) >= 2 and train:
        best_i = min(range(len(evals)), key=lambda i: evals[i][1])
        best_step, best = evals[best_i]
        last_step, last = evals[-1]
        rise = (last - best) / best if best > 0 else 0.0
        at_best = [loss for step, loss in train if step <= best_step] or [train[0][1]]
        train_fell = train[-1][1] < at_best[-1]
        if best_i < len(evals) - 1 and rise > OVERFIT_RISE and train_fell:
            flags.append(
                {
                    "flag": "overfitting",
                    "message": f"The validation loss rose {100 * rise:.0f}% from its best ({best:.4g} at step "
                    f"{best_step}) to {last:.4g} while the training loss kept falling: the model is memorising "
                    "the training data. "
                    + (
                        f"Early stopping kept the weights of step {kept_step}."
                        if kept_step is not None
                        else "Use early_stopping, fewer epochs, more data, weight_decay or dropout."
                    ),
                    "numbers": {
                        "best_eval_loss": best,
                        "best_step": best_step,
                        "last_eval_loss": last,
                        "relative_rise": round(rise, 4),
                        "train_loss_at_best": at_best[-1],
                        "train_loss_last": train[-1][1],
                    },
                }
            )
    return flags


def forgetting(before: float, after: float) -> dict[str, float]:
    """The reference loss before and after training, and how much it rose (catastrophic forgetting)."""
    return {
        "reference_loss_before": round(before, 6),
        "reference_loss_after": round(after, 6),
        "increase": round(after - before, 6),
    }
