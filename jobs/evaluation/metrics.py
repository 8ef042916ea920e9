"""Evaluation metrics: scikit-learn for classification, perplexity for causal LMs (never a hub download)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from sklearn.metrics import accuracy_score, precision_recall_fscore_support

PERPLEXITY_CAP = 1e6  # exp(loss) overflows for a random model; past this the number means nothing anyway
# Trainer bookkeeping that is not a metric of the model.
_NOT_METRICS = frozenset(
    {
        "runtime",
        "samples_per_second",
        "steps_per_second",
        "epoch",
        "num_input_tokens_seen",
        "model_preparation_time",
    }
)


def classification_metrics(
    y_true: Sequence[int], y_pred: Sequence[int], labels: Sequence[str]
) -> dict[str, float]:
    """Accuracy, macro precision/recall/F1, and each class's as `f1/<label>`; an absent class scores 0."""
    ids = list(range(len(labels)))
    p, r, f, _ = precision_recall_fscore_support(y_true, y_pred, labels=ids, average="macro", zero_division=0)
    out = {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "precision": float(p),  # macro averages: every class counts the same, however rare
        "recall": float(r),
        "f1": float(f),
    }
    pc, rc, fc, _ = precision_recall_fscore_support(y_true, y_pred, labels=ids, average=None, zero_division=0)
    for i, name in enumerate(labels):
        out[f"precision/{name}"] = float(pc[i])
        out[f"recall/{name}"] = float(rc[i])
        out[f"f1/{name}"] = float(fc[i])
    return out


def classification_compute_metrics(labels: Sequence[str]) -> Callable[[Any], dict[str, float]]:
    """A Trainer `compute_metrics` for sequence classification over `labels`."""

    def compute(prediction: Any) -> dict[str, float]:
        logits = (
            prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
        )
        return classification_metrics(prediction.label_ids, np.argmax(logits, axis=-1), labels)

    return compute


def perplexity(loss: float) -> float:
    """exp(mean token loss), capped at PERPLEXITY_CAP."""
    return PERPLEXITY_CAP if loss > math.log(PERPLEXITY_CAP) else math.exp(loss)


def eval_values(metrics: Mapping[str, Any], causal: bool) -> dict[str, float]:
    """Trainer eval output (`eval_loss`, `eval_runtime` ...) -> model metrics without prefix, + perplexity."""
    out = {}
    for key, value in metrics.items():
        name = key.removeprefix("eval_")
        if name in _NOT_METRICS or not isinstance(value, int | float) or not math.isfinite(value):
            continue
        out[name] = float(value)
    if causal and "loss" in out:
        out["perplexity"] = perplexity(out["loss"])
    return out


def summary(values: Mapping[str, float]) -> dict[str, float]:
    """An evaluation as results["baseline" | "final"]: its `loss` named `eval_loss` (not a train loss)."""
    return {("eval_loss" if k == "loss" else k): v for k, v in values.items()}


class PredictionKeeper:
    """Wraps a classification `compute_metrics` and keeps the last evaluation's (true, predicted) class ids."""

    def __init__(self, compute: Callable[[Any], dict[str, float]]) -> None:
        self.compute = compute
        self.last: tuple[list[int], list[int]] | None = None

    def __call__(self, prediction: Any) -> dict[str, float]:
        logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
        self.last = (np.asarray(prediction.label_ids).tolist(), np.argmax(logits, axis=-1).tolist())
        return self.compute(prediction)
