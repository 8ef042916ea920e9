"""Rows most likely mislabeled: cleanlab's confident learning over a cheap model's out-of-sample probabilities.

A TF-IDF (word 1-2 grams) + logistic regression pipeline gives each row class probabilities from a model that
never saw the row (stratified, seeded k-fold `cross_val_predict`); `cleanlab.filter.find_label_issues` flags the
rows whose given label the per-class confidence thresholds disagree with (Northcutt et al., 2021). A row's score
is cleanlab's label quality (self-confidence: the out-of-sample probability of its given label): lower is more
suspect. The finder serves the file profile (the job's validation stores the training file's issues next to it)
and `data.drop_label_issues` (jobs/data/prepare.py, on the training split).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ftjobs.client.models import LabelIssue, LabelIssues
from ftjobs.core.keys import file_label_issues_path
from ftjobs.core.storage import Storage
from ftjobs.jobs.data.clean import label
from ftjobs.jobs.data.inputs import fetch_rows
from ftjobs.jobs.data.read import Row
from ftjobs.jobs.errors import DataError

FOLDS = 5  # cross-validation folds; fewer when the rarest checked label has fewer rows
MAX_ROWS = 50_000  # a profile checks the first rows only (~5 s of CPU per 5,000 short texts)
MAX_TEXT_CHARS = 2_000  # each text is cut here: enough words for a bag-of-words model
PROFILE_SEED = 0  # the profile's folds: fixed, so a file's entry does not depend on which job wrote it
MAX_LISTED = 100  # issues a profile lists (most suspect first); `found` counts them all
METHOD = "cleanlab find_label_issues (prune_by_noise_rate) over 5-fold TF-IDF + logistic regression probabilities"


@dataclass
class Finding:
    """What the finder saw: rows checked and the flagged ones (indices into the input), most suspect first."""

    rows: int
    indices: list[int] = field(default_factory=list)
    suggested: list[str] = field(default_factory=list)  # per flagged row: the model's most probable label
    scores: list[float] = field(default_factory=list)  # per flagged row: label quality in [0, 1], lower = worse
    note: str | None = None  # why some or all rows were not checked


def find_issues(texts: Sequence[str], labels: Sequence[str], seed: int) -> Finding:
    """Flag likely label errors among (text, label) pairs; labels with fewer than 2 rows are not checked."""
    from cleanlab.filter import find_label_issues  # imported lazily: the worker preloads it (jobs/worker.py)
    from cleanlab.rank import get_label_quality_scores
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline

    counts = Counter(labels)
    checked = [i for i, lab in enumerate(labels) if counts[lab] >= 2]  # a single row cannot be cross-validated
    note = None
    if len(checked) < len(labels):
        note = f"{len(labels) - len(checked)} row(s) whose label occurs once were not checked"
    classes = sorted({labels[i] for i in checked})
    if len(classes) < 2:
        return Finding(len(labels), note="fewer than 2 labels with at least 2 rows: nothing to check")
    index = {c: k for k, c in enumerate(classes)}
    y = np.asarray([index[labels[i]] for i in checked])
    x = [texts[i][:MAX_TEXT_CHARS] for i in checked]
    folds = min(FOLDS, min(Counter(y.tolist()).values()))
    model = make_pipeline(
        TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, token_pattern=r"(?u)\b\w+\b"),  # 1-char words too
        # C=10: less shrinkage, sharper probabilities on short texts (SMS spam, 5% flipped: precision ~0.87 and
        # recall ~0.89, vs 0.93/0.86 at C=1); liblinear is ~5x faster than lbfgs here but binary only
        LogisticRegression(C=10.0, solver="liblinear" if len(classes) == 2 else "lbfgs", max_iter=1000),
    )
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    probs = cross_val_predict(model, x, y, cv=cv, method="predict_proba")
    flagged = find_label_issues(y, probs, return_indices_ranked_by="self_confidence", n_jobs=1)  # no forks
    quality = get_label_quality_scores(y, probs, method="self_confidence")
    return Finding(
        len(labels),
        indices=[checked[int(i)] for i in flagged],
        suggested=[classes[int(probs[i].argmax())] for i in flagged],
        scores=[round(float(quality[i]), 6) for i in flagged],
        note=note,
    )


def find_in_rows(rows: Sequence[Row], seed: int) -> Finding:
    """`find_issues` over classification rows (their `text` and label)."""
    return find_issues([str(r.data.get("text", "")) for r in rows], [label(r) for r in rows], seed)


def drop_issues(rows: list[Row], seed: int) -> tuple[list[Row], dict[str, Any]]:
    """The rows without the flagged ones, and the step's details (the first few flagged, with their labels)."""
    try:
        finding = find_in_rows(rows, seed)
    except ValueError as e:  # scikit-learn's, e.g. no words at all to build a vocabulary from
        raise DataError(f"drop_label_issues: {e}", param="data.drop_label_issues") from None
    flagged = set(finding.indices)
    examples = [
        {"line": rows[i].line, "label": label(rows[i]), "suggested": s, "score": q}
        for i, s, q in zip(finding.indices[:20], finding.suggested, finding.scores, strict=False)
    ]
    details: dict[str, Any] = {"method": METHOD, "found": len(flagged), "examples": examples}
    if finding.note:
        details["note"] = finding.note
    return [r for i, r in enumerate(rows) if i not in flagged], details


def file_issues(rows: Sequence[Row], seed: int, job_id: str) -> LabelIssues:
    """A training file's profile entry: its first MAX_ROWS rows checked, the most suspect listed."""
    checked = list(rows[:MAX_ROWS])
    finding = find_in_rows(checked, seed)
    notes = [finding.note] if finding.note else []
    if len(rows) > MAX_ROWS:
        notes.append(f"only the first {MAX_ROWS} of {len(rows)} rows were checked")
    issues = [
        LabelIssue(line=checked[i].line, label=label(checked[i]), suggested=s, score=q)
        for i, s, q in zip(finding.indices[:MAX_LISTED], finding.suggested, finding.scores, strict=False)
    ]
    return LabelIssues(
        job_id=job_id,
        created_at=time.time(),
        rows=len(checked),
        found=len(finding.indices),
        method=METHOD,
        issues=issues,
        notes=notes,
    )


def profile_file(store: Storage, tenant: str, file_id: str, job_id: str, work: Path) -> LabelIssues | None:
    """Find a training file's label issues and store them next to it for its profile, unless an earlier job did
    (a file's content never changes); None when stored already or when the rows give the model nothing to learn."""
    path = file_label_issues_path(tenant, file_id)
    if store.exists(path):
        return None
    rows = fetch_rows(store, tenant, file_id, "training_file", work)
    try:
        found = file_issues(rows, PROFILE_SEED, job_id)
    except ValueError:  # scikit-learn's (no words to build a vocabulary from): no profile entry, not a failure
        return None
    store.write_bytes(path, found.model_dump_json().encode())
    return found
