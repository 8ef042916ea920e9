"""The labeling functions' votes and the label model's combination (jobs/annotate_lfs.py), without a worker."""

from __future__ import annotations

import numpy as np

from ftjobs.jobs.annotate_lfs import ABSTAIN, combine, label_matrix, zero_shot_column

LABELS = ["ham", "spam"]
TEXTS = ["WIN a prize", "the window is open", "call 80086 now", "ok see you at home", "Win-win", "nothing here"]


def rules() -> list[dict[str, object]]:
    return [
        {"type": "keywords", "label": "spam", "keywords": ["win", "prize"]},
        {"type": "regex", "label": "spam", "pattern": r"\b\d{5}\b"},
        {"type": "keywords", "label": "ham", "keywords": ["see you", "home"]},
        {"type": "keywords", "label": "spam", "keywords": ["WIN"], "case_sensitive": True},
    ]


def unused(model: str) -> None:
    raise AssertionError(f"no model is loaded for rules ({model})")


def test_keywords_match_whole_words_and_phrases_regexes_anywhere() -> None:
    L = label_matrix(TEXTS, rules(), LABELS, unused, print)  # type: ignore[arg-type]
    spam, ham = 1, 0
    assert L[:, 0].tolist() == [spam, ABSTAIN, ABSTAIN, ABSTAIN, spam, ABSTAIN]  # not inside "window"
    assert L[:, 1].tolist() == [ABSTAIN, ABSTAIN, spam, ABSTAIN, ABSTAIN, ABSTAIN]
    assert L[:, 2].tolist() == [ABSTAIN, ABSTAIN, ABSTAIN, ham, ABSTAIN, ABSTAIN]  # a phrase, and a word
    assert L[:, 3].tolist() == [spam, ABSTAIN, ABSTAIN, ABSTAIN, ABSTAIN, ABSTAIN]  # case-sensitive: not "Win"


def test_zero_shot_votes_the_nearest_description_unless_too_close_or_not_its_label() -> None:
    rows = np.array([[1.0, 0.0], [0.0, 1.0], [0.7071, 0.7071], [0.8, 0.6]])
    descriptions = np.array([[1.0, 0.0], [0.0, 1.0]])  # ham, spam
    assert zero_shot_column(rows, descriptions, [0, 1], None, 0.0, 0.0).tolist()[:2] == [0, 1]
    assert zero_shot_column(rows, descriptions, [0, 1], None, 0.0, 0.1).tolist() == [0, 1, ABSTAIN, 0]
    assert zero_shot_column(rows, descriptions, [0, 1], None, 0.9, 0.0).tolist() == [0, 1, ABSTAIN, ABSTAIN]
    assert zero_shot_column(rows, descriptions, [0, 1], 1, 0.0, 0.1).tolist() == [ABSTAIN, 1, ABSTAIN, ABSTAIN]


def test_the_label_model_needs_three_functions_else_majority_vote() -> None:
    L = label_matrix(TEXTS, rules(), LABELS, unused, print)  # type: ignore[arg-type]
    none = np.full(len(TEXTS), ABSTAIN)
    combined = combine(L, 2, 100, 0, none)
    assert combined.method == "label_model" and not np.isnan(combined.weights).any()
    assert combined.predicted[-1] == ABSTAIN and combined.probability[-1] == 0  # no vote: no label
    covered = (L != ABSTAIN).any(axis=1)  # six rows teach it little: only that every covered row gets a label
    assert set(combined.predicted[covered].tolist()) <= {0, 1} and (combined.probability[covered] >= 0.5).all()
    assert np.allclose(combined.coverage, (L != ABSTAIN).mean(axis=0))
    two = combine(L[:, :2], 2, 100, 0, none)
    assert two.method == "majority_vote" and np.isnan(two.weights).all()
    assert two.predicted.tolist() == [1, ABSTAIN, 1, ABSTAIN, 1, ABSTAIN] and two.probability[0] == 1
    empty = combine(label_matrix([], rules(), LABELS, unused, print), 2, 10, 0, np.zeros(0, dtype=np.int64))  # type: ignore[arg-type]
    assert empty.predicted.shape == (0,) and empty.coverage.tolist() == [0, 0, 0, 0]
