"""Bias amplification: confusion matrices and per-group metrics of the validation set, before vs after training."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score

from ftjobs.jobs.data.examples import Datasets


def confusion(y_true: Sequence[int], y_pred: Sequence[int], n_labels: int) -> list[list[int]]:
    """Rows: the true class, columns: the predicted one (label order)."""
    return confusion_matrix(y_true, y_pred, labels=list(range(n_labels))).tolist()


def group_metrics(y_true: Sequence[int], y_pred: Sequence[int], groups: Sequence[str], n_labels: int) -> dict[str, Any]:
    """Accuracy and macro F1 per group, the worst group's, and the gap between the best and the worst group."""
    per: dict[str, dict[str, float]] = {}
    yt, yp = np.asarray(y_true), np.asarray(y_pred)
    for g in sorted(set(groups)):
        idx = np.asarray([i for i, x in enumerate(groups) if x == g])
        per[g] = {
            "n": int(len(idx)),
            "accuracy": float(accuracy_score(yt[idx], yp[idx])),
            # macro over the classes this group has (true or predicted): a class it lacks is not a zero
            "f1": float(f1_score(yt[idx], yp[idx], labels=sorted(set(yt[idx]) | set(yp[idx])), average="macro")),
        }
    gap = {
        m: (max(v[m] for v in per.values()) - min(v[m] for v in per.values())) if per else math.nan
        for m in ("accuracy", "f1")
    }
    worst = {m: min(v[m] for v in per.values()) if per else math.nan for m in ("accuracy", "f1")}
    return {"per_group": per, "gap": gap, "worst": worst}


def row_groups(rows: Sequence[Any], field: str) -> list[str]:
    """The group of each row (`Row.data[field]`), as text; a row without one is in group `(missing)`."""
    return [str(r.data.get(field)) if r.data.get(field) is not None else "(missing)" for r in rows]


def bias_report(
    data: Datasets, group_field: str | None, before: tuple[list[int], list[int]], after: tuple[list[int], list[int]]
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Confusion matrices, and per-group metrics (None without groups), of the validation set before and after."""
    n = len(data.labels or [])
    confusions = {"labels": data.labels, "baseline": confusion(*before, n), "final": confusion(*after, n)}
    groups = row_groups(data.validation_rows, group_field) if group_field else []
    if not groups or len(groups) != len(after[0]):  # one group per validation example, in order
        return confusions, None
    baseline, final = group_metrics(*before, groups, n), group_metrics(*after, groups, n)
    change = {  # final - baseline: worst-group metrics up and the gap down is what debiasing is for
        key: {m: final[key][m] - baseline[key][m] for m in ("accuracy", "f1")} for key in ("worst", "gap")
    }
    return confusions, {"field": group_field, "baseline": baseline, "final": final, "change": change}
