"""Hold out validation rows and balance the training split's classes: seeded, so a job repeats exactly."""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from collections.abc import Sequence

from ftjobs.core.rows import label_text
from ftjobs.jobs.data.read import Row

MIN_TRAIN_ROWS = 2


def split_rows(
    rows: list[Row], fraction: float, seed: int, stratify: Sequence[str] | None = None
) -> tuple[list[Row], list[Row], str]:
    """Seeded hold-out of `fraction` of the rows (stratified if possible) -> train, validation, note."""
    from sklearn.model_selection import train_test_split

    n_val = max(1, round(len(rows) * fraction)) if fraction > 0 else 0
    if n_val == 0 or len(rows) - n_val < MIN_TRAIN_ROWS:
        return rows, [], "no validation split (validation_split is 0 or too few rows)"
    index = list(range(len(rows)))
    how = "stratified"
    try:
        train_i, val_i = train_test_split(index, test_size=n_val, random_state=seed, stratify=stratify)
    except ValueError:  # a class with one row, or fewer held-out rows than classes
        train_i, val_i = train_test_split(index, test_size=n_val, random_state=seed)
        how = "unstratified: a class is too small to stratify" if stratify is not None else "random"
    if stratify is None:
        how = "random"
    note = f"held out {len(val_i)} of {len(rows)} training rows for validation ({how}, seed {seed})"
    return [rows[i] for i in sorted(train_i)], [rows[i] for i in sorted(val_i)], note


def class_weights(rows: list[Row]) -> dict[str, float]:
    """label -> loss weight, inversely proportional to the label's share (balance="class_weights")."""
    counts = Counter(label_text(r.data) for r in rows)
    total, k = sum(counts.values()), len(counts)
    return {lab: round(total / (k * c), 6) for lab, c in sorted(counts.items())}


def resample(rows: list[Row], how: str, rng: random.Random) -> list[Row]:
    """Seeded over- or undersampling to equal class counts (order: by class, then shuffled)."""
    by_label: dict[str, list[Row]] = defaultdict(list)
    for r in rows:
        by_label[label_text(r.data)].append(r)
    counts = [len(v) for v in by_label.values()]
    target = max(counts) if how == "oversample" else min(counts)
    out: list[Row] = []
    for lab in sorted(by_label):
        group = by_label[lab]
        if len(group) >= target:
            out += group if how == "oversample" else rng.sample(group, target)
        else:
            out += group + [rng.choice(group) for _ in range(target - len(group))]
    rng.shuffle(out)
    return out
