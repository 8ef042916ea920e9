"""Labeling functions and the label model of an annotation (jobs/annotate_job.py runs them on a file's rows).

    texts -> one column of votes per function (a label index, or ABSTAIN = -1): the label matrix L (n x m)
    L -> Snorkel's LFAnalysis (coverage, overlaps, conflicts per function)
    L -> Snorkel's LabelModel (learns each function's accuracy from their agreements, no labels needed)
      -> each covered row's label and its probability; majority vote beside it, for comparison

Keywords match as whole words or phrases (not inside a longer word), regular expressions anywhere (Python `re`,
`search`); the zero-shot function embeds rows and label descriptions with a local encoder (mean pooling over the
last hidden state, L2-normalised: all-MiniLM-L6-v2's sentence embedding) and votes the most similar label.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

ABSTAIN = -1
EMBED_BATCH = 64
EMBED_MAX_TOKENS = 256


def keyword_search(keywords: Sequence[str], case_sensitive: bool) -> Callable[[str], Any]:
    words = sorted({k.strip() for k in keywords}, key=len, reverse=True)
    pattern = r"(?<!\w)(?:" + "|".join(re.escape(w) for w in words) + r")(?!\w)"
    return re.compile(pattern, 0 if case_sensitive else re.IGNORECASE).search


def match_column(texts: Sequence[str], search: Callable[[str], Any], label: int) -> np.ndarray:
    return np.fromiter((label if search(t) else ABSTAIN for t in texts), dtype=np.int64, count=len(texts))


def embed(model_dir: Path, texts: Sequence[str]) -> np.ndarray:
    """Sentence embeddings (n x d, unit length) from the encoder at `model_dir`, on the CPU (or its one GPU)."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModel.from_pretrained(model_dir)
    model.eval()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device)
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # similar lengths batched: little padding
    out = []
    with torch.inference_mode():
        for start in range(0, len(texts), EMBED_BATCH):
            batch = tokenizer([texts[i] for i in order[start : start + EMBED_BATCH]], padding=True, truncation=True,
                              max_length=EMBED_MAX_TOKENS, return_tensors="pt").to(device)  # fmt: skip
            hidden = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
            out.append(torch.nn.functional.normalize(pooled.float(), dim=-1).cpu().numpy())
    if not out:
        return np.zeros((0, 1), dtype=np.float32)
    embedded = np.empty((len(texts), out[0].shape[1]), dtype=np.float32)
    embedded[order] = np.concatenate(out)
    return embedded


def zero_shot_column(
    rows: np.ndarray, descriptions: np.ndarray, label_ids: list[int], only: int | None, min_sim: float, margin: float
) -> np.ndarray:
    """Votes from row embeddings against description embeddings (rows of `descriptions` are `label_ids`)."""
    sims = rows @ descriptions.T
    order = np.argsort(-sims, axis=1)
    best = sims[np.arange(len(sims)), order[:, 0]]
    second = sims[np.arange(len(sims)), order[:, 1]]
    votes = np.asarray(label_ids, dtype=np.int64)[order[:, 0]]
    keep = (best >= min_sim) & (best - second >= margin)
    if only is not None:
        keep &= votes == only
    return np.where(keep, votes, ABSTAIN)


def label_matrix(
    texts: Sequence[str], functions: list[dict[str, Any]], labels: list[str], model_dir: Callable[[str], Path],
    note: Callable[[str], None],
) -> np.ndarray:  # fmt: skip
    """L (n x m): each function's votes over the texts. Each zero-shot model embeds the texts once."""
    if not texts:
        return np.full((0, len(functions)), ABSTAIN, dtype=np.int64)
    index = {label: i for i, label in enumerate(labels)}
    embedded: dict[str, np.ndarray] = {}
    columns = []
    for f in functions:
        if f["type"] in ("keywords", "regex"):
            flags = 0 if f.get("case_sensitive") else re.IGNORECASE
            search = keyword_search(f["keywords"], f.get("case_sensitive", False)) if f["type"] == "keywords" else \
                re.compile(f["pattern"], flags).search  # fmt: skip
            columns.append(match_column(texts, search, index[f["label"]]))
            continue
        folder = model_dir(f["model"])
        if f["model"] not in embedded:
            started = _now()
            embedded[f["model"]] = embed(folder, texts)
            note(f"embedded {len(texts)} rows with {f['model']} in {_now() - started:.1f} s")
        described = list(f["descriptions"].items())
        desc = embed(folder, [text for _, text in described])
        only = index[f["label"]] if f.get("label") else None
        ids = [index[label] for label, _ in described]
        columns.append(zero_shot_column(embedded[f["model"]], desc, ids, only, f["min_similarity"], f["min_margin"]))
    return np.stack(columns, axis=1) if columns else np.zeros((len(texts), 0), dtype=np.int64)


@dataclass
class Combined:
    """The label model's output over all rows, and the analysis of the functions."""

    predicted: np.ndarray  # (n,) label index, ABSTAIN where no function voted
    probability: np.ndarray  # (n,) the predicted label's probability (0 where abstained)
    majority: np.ndarray  # (n,) majority vote (ties broken at random, seeded), ABSTAIN where no function voted
    coverage: np.ndarray  # (m,)
    overlaps: np.ndarray
    conflicts: np.ndarray
    weights: np.ndarray  # (m,) each function's estimated accuracy (NaN under majority vote)
    method: Literal["label_model", "majority_vote"]  # majority vote with fewer than 3 functions (LabelModel needs 3)


def combine(
    L: np.ndarray, cardinality: int, epochs: int, seed: int, given: np.ndarray, prior: list[float] | None = None
) -> Combined:
    """Snorkel's LabelModel fitted on L (unsupervised), and LFAnalysis of L. `given`: (n,) a row's given label
    index or ABSTAIN. The class balance: `prior`, else the given labels' when they hold every class, else uniform."""
    import warnings

    from snorkel.labeling import LFAnalysis
    from snorkel.labeling.model import LabelModel, MajorityLabelVoter

    with warnings.catch_warnings():  # scipy's FutureWarning about snorkel's sparse diagonals, once per fit
        warnings.simplefilter("ignore", FutureWarning)
        return _combine(L, cardinality, epochs, seed, given, prior, LFAnalysis, LabelModel, MajorityLabelVoter)


def _combine(
    L: np.ndarray, cardinality: int, epochs: int, seed: int, given: np.ndarray, prior: list[float] | None,
    LFAnalysis: Any, LabelModel: Any, MajorityLabelVoter: Any,
) -> Combined:  # fmt: skip

    n, m = L.shape
    covered = (L != ABSTAIN).any(axis=1)
    if n == 0:
        coverage = overlaps = conflicts = np.zeros(m)
    else:
        analysis = LFAnalysis(L)
        coverage, overlaps, conflicts = analysis.lf_coverages(), analysis.lf_overlaps(), analysis.lf_conflicts()
    predicted = np.full(n, ABSTAIN, dtype=np.int64)
    probability = np.zeros(n)
    majority = np.full(n, ABSTAIN, dtype=np.int64)
    weights = np.full(m, float("nan"))
    method: Literal["label_model", "majority_vote"] = "label_model" if m >= 3 else "majority_vote"
    if covered.any():
        voter = MajorityLabelVoter(cardinality=cardinality, verbose=False)
        majority = np.where(covered, voter.predict(L, tie_break_policy="random"), ABSTAIN)
        if method == "label_model":
            model = LabelModel(cardinality=cardinality, verbose=False, device="cpu")
            known = given[given != ABSTAIN]
            balance = None if prior is None else np.asarray(prior) / sum(prior)
            if balance is None and len(np.unique(known)) == cardinality:
                balance = np.bincount(known, minlength=cardinality) / len(known)
            model.fit(L, class_balance=balance, n_epochs=epochs, seed=seed, progress_bar=False)
            proba = model.predict_proba(L)
            weights = np.asarray(model.get_weights(), dtype=float)
        else:
            proba = voter.predict_proba(L)
        predicted = np.where(covered, proba.argmax(axis=1), ABSTAIN)
        probability = np.where(covered, proba.max(axis=1), 0.0)
    return Combined(predicted, probability, majority, coverage, overlaps, conflicts, weights, method)


def _now() -> float:
    import time

    return time.monotonic()
