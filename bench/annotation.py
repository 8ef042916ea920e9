"""Labeling functions on SMS spam: coverage, and the label model's accuracy against the true labels.

The five functions of tests/service/test_annotations.py (spam keywords, long numbers, money/URLs, chat words, and
MiniLM's zero-shot guess from two label descriptions) over ../shared/data/sms_spam (or the demo's 900 rows with
--demo), through the worker's own code (jobs/annotate_lfs.py: the label matrix, Snorkel's LFAnalysis and LabelModel).
For each share of rows given their true label (0 = fully unlabeled: a uniform class prior; otherwise the given rows
set the prior; a last run has no labels but a `class_balance`, --prior), prints coverage, and accuracy / macro-F1 / spam F1 of the label model and of majority vote on the
rows the functions labeled, against their true labels, beside always answering the majority class.

    .venv/bin/python bench/annotation.py [--rows 2000] [--given 0,0.01,0.05] [--no-zero-shot] [--demo]

Skips (exit 0) when ../shared/data is absent and --demo is not given.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from ftjobs.jobs.annotate_lfs import ABSTAIN, combine, label_matrix  # noqa: E402
from ftjobs.launch.stack import minilm_dir  # noqa: E402
from tests.service.test_annotations import sms_functions  # noqa: E402

DATA = REPO.parent / "shared" / "data" / "sms_spam" / "sms_spam.jsonl"
DEMO = [REPO / "launch" / "demo_data" / f"sms_spam_{split}.jsonl" for split in ("train", "heldout")]
LABELS = ["ham", "spam"]


def scores(predicted: np.ndarray, truth: np.ndarray) -> tuple[float, float, float]:
    from sklearn.metrics import f1_score

    return (float((predicted == truth).mean()), float(f1_score(truth, predicted, average="macro")),
            float(f1_score(truth, predicted)))  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2000, help="the first N rows (0: all)")
    parser.add_argument("--given", default="0,0.01,0.05", help="shares of rows given their true label")
    parser.add_argument("--prior", default="0.87,0.13", help="ham,spam shares for a run with no labels but a "
                        "`class_balance` (an estimate a tenant may know)")  # fmt: skip
    parser.add_argument("--no-zero-shot", action="store_true", help="the four rules only (no model)")
    parser.add_argument("--demo", action="store_true", help="the demo's 900 SMS rows in the repo")
    args = parser.parse_args()
    files = DEMO if args.demo else [DATA]
    if not all(f.exists() for f in files):
        print(f"skipped: {DATA} is absent (run with --demo for the repo's subset)")
        return 0
    rows = [json.loads(line) for f in files for line in f.read_text("utf-8").splitlines() if line.strip()]
    rows = rows[: args.rows] if args.rows else rows
    texts, truth = [r["text"] for r in rows], np.array([LABELS.index(r["label"]) for r in rows])
    model = minilm_dir()
    functions = sms_functions(str(model))
    if args.no_zero_shot or model is None:
        functions = functions[:4]
    for f in functions:  # the defaults the API fills in
        f.setdefault("case_sensitive", False)
        f.update({"min_similarity": 0.0, "min_margin": 0.0} if f["type"] == "zero_shot" else {})
    started = time.monotonic()
    L = label_matrix(texts, functions, LABELS, Path, lambda message: print(f"  {message}"))
    print(f"{len(rows)} rows ({truth.mean():.1%} spam), label matrix in {time.monotonic() - started:.0f} s")
    print(f"{'function':<14} {'coverage':>8} {'accuracy':>8}")
    for j, f in enumerate(functions):
        voted = L[:, j] != ABSTAIN
        accuracy = (L[voted, j] == truth[voted]).mean() if voted.any() else float("nan")
        print(f"{f['name']:<14} {voted.mean():>8.3f} {accuracy:>8.3f}")
    rng = np.random.default_rng(0)
    print(f"\n{'given':>6} {'coverage':>8} | {'label model: acc':>16} {'macro-F1':>8} {'spam F1':>7} | "
          f"{'majority vote: acc':>18} {'macro-F1':>8} {'spam F1':>7} | {'majority class':>14}")  # fmt: skip
    prior = [float(p) for p in args.prior.split(",")]
    runs = [(float(s), None) for s in args.given.split(",")] + [(0.0, prior)]
    for share, balance in runs:
        given = np.full(len(rows), ABSTAIN)
        picked = rng.choice(len(rows), round(share * len(rows)), replace=False)
        given[picked] = truth[picked]
        c = combine(L, len(LABELS), 500, 0, given, balance)
        scored = (c.predicted != ABSTAIN) & (given == ABSTAIN)
        model_scores = scores(c.predicted[scored], truth[scored])
        vote_scores = scores(c.majority[scored], truth[scored])
        majority_class = max(truth[scored].mean(), 1 - truth[scored].mean())
        shown = f"{share:.0%}" if balance is None else "prior"
        print(f"{shown:>6} {(L != ABSTAIN).any(axis=1).mean():>8.3f} | {model_scores[0]:>16.3f} "
              f"{model_scores[1]:>8.3f} {model_scores[2]:>7.3f} | {vote_scores[0]:>18.3f} {vote_scores[1]:>8.3f} "
              f"{vote_scores[2]:>7.3f} | {majority_class:>14.3f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
