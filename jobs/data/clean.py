"""Cleaning the training rows: normalise text and labels, drop invalid or conflicting rows, drop duplicates.

Plain functions over `Row`s; `jobs/data/prepare.py` runs them in order and reports each one's rows in and out.
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Callable
from typing import Any

from ftjobs.client.models import Task
from ftjobs.core.rows import OUTPUT_FIELDS, TEXT_FIELDS, label_text, task_row_problem
from ftjobs.jobs.data.read import Row

_NEAR = re.compile(rf"[\s\d{re.escape(string.punctuation)}]+")
_LETTERS = re.compile(r"[^\W\d_]+")  # runs of letters: words without the digits and punctuation near_key drops
SHINGLE_CHARS = 5  # dedup minhash: character 5-grams (measured on SMS spam against word 2-grams: see shingles)
MINHASH_PERM = 128
MINHASH_SEED = 1  # fixed, not the job's seed: the same file loses the same rows whatever the training seed


def copy_row(row: Row, data: dict[str, Any]) -> Row:
    return Row(row.line, data, row.file, row.unit)


def map_text(row: Row, fn: Callable[[str], str], inputs_only: bool = False) -> Row:
    """Apply `fn` to the row's text fields (inputs only: not completions, targets or assistant turns)."""
    d = dict(row.data)
    for name in TEXT_FIELDS:
        if inputs_only and name in OUTPUT_FIELDS:
            continue
        if isinstance(d.get(name), str):
            d[name] = fn(d[name])
    if isinstance(d.get("messages"), list):
        d["messages"] = [
            {**m, "content": fn(m["content"])}
            if isinstance(m, dict)
            and isinstance(m.get("content"), str)
            and not (inputs_only and m.get("role") == "assistant")
            else m
            for m in d["messages"]
        ]
    return copy_row(row, d)


def content(row: Row) -> str:
    """All the row's text, for length filters and near-duplicate keys."""
    d = row.data
    parts = [d[n] for n in TEXT_FIELDS if isinstance(d.get(n), str)]
    if isinstance(d.get("messages"), list):
        parts += [m["content"] for m in d["messages"] if isinstance(m, dict) and isinstance(m.get("content"), str)]
    return "\n".join(parts)


def label(row: Row) -> str:
    return label_text(row.data)


def normalize_text(text: str) -> str:
    """NFKC, then every whitespace run becomes one space, trimmed."""
    return " ".join(unicodedata.normalize("NFKC", text).split())


def near_key(text: str) -> str:
    """Lowercase, without punctuation, digits or whitespace: what near-duplicates share."""
    return _NEAR.sub("", text.lower())


def shingles(text: str, n: int = SHINGLE_CHARS) -> set[str]:
    """Character n-grams of the lowercased words (no digits or punctuation, one space between them).

    Character rather than word shingles: in short texts (SMS are 10-20 words) one changed word removes two
    of ~10 word 2-grams (Jaccard ~0.65), but only ~the word's length of ~60 character 5-grams (~0.75-0.85),
    and typos, truncations and missing spaces ("DeliveredTomorrow") leave most 5-grams intact. A text shorter
    than n is one shingle, so short rows still match their exact (normalised) copies; no words, no shingles.
    """
    s = " ".join(_LETTERS.findall(text.lower()))
    if len(s) <= n:
        return {s} if s else set()
    return {s[i : i + n] for i in range(len(s) - n + 1)}


def is_valid(row: Row, task: Task) -> bool:
    """The row is one `task` trains on, by the shared row rules (what `data.drop_invalid` keeps)."""
    return task_row_problem(task, row.data) is None


def normalize_labels(train: list[Row], validation: list[Row] | None) -> tuple[list[Row], list[Row] | None, dict]:
    """Labels equal after strip + casefold become the most frequent spelling (strings only)."""
    spellings: dict[str, Counter[str]] = defaultdict(Counter)
    for r in train:
        if isinstance(r.data.get("label"), str):
            spellings[r.data["label"].strip().casefold()][r.data["label"].strip()] += 1
    canonical = {key: counts.most_common(1)[0][0] for key, counts in spellings.items()}
    merged = {canonical[k]: sorted(c) for k, c in spellings.items() if len(c) > 1}

    def fix(rows: list[Row]) -> list[Row]:
        out = []
        for r in rows:
            lab = r.data.get("label")
            if isinstance(lab, str) and lab.strip().casefold() in canonical:
                r = copy_row(r, {**r.data, "label": canonical[lab.strip().casefold()]})
            out.append(r)
        return out

    return fix(train), fix(validation) if validation is not None else None, merged


def dedup(rows: list[Row], key: Callable[[Row], str]) -> list[Row]:
    seen: set[str] = set()
    out = []
    for r in rows:
        k = key(r)
        if k not in seen:
            seen.add(k)
            out.append(r)
    return out


def dedup_minhash(rows: list[Row], threshold: float, by_label: bool) -> tuple[list[Row], list[tuple[Row, Row]]]:
    """Drop each row whose MinHash-estimated Jaccard similarity to an earlier kept row is >= threshold.

    Returns the kept rows and (kept, dropped) pairs, the kept row being the earliest match. `by_label`: rows
    are only compared with rows of their own label (as dedup near). Rows without words are always kept.
    """
    from datasketch import MinHash, MinHashLSH  # the worker extra; ~0.7 s to import (scipy)

    # The LSH bands only propose candidates, each then checked against `threshold`. Banded at `threshold`
    # itself they miss many pairs just above it (sms_spam at 0.8: 84 of the 95 found by comparing all pairs);
    # banded 0.2 lower they found all 95 (18 bands of 7 instead of 9 of 13). 100k SMS-like rows: ~15 s, ~7 KB
    # a kept row (~550 MB).
    index_threshold = max(0.3, threshold - 0.2)
    indexes: dict[str, tuple[MinHashLSH, dict[int, MinHash]]] = {}
    shingled = ([s.encode() for s in shingles(content(r))] for r in rows)  # lazily: a row's shingles are ~5 KB
    hashes = MinHash.generator(shingled, num_perm=MINHASH_PERM, seed=MINHASH_SEED)
    kept: list[Row] = []
    pairs: list[tuple[Row, Row]] = []
    for i, (row, minhash) in enumerate(zip(rows, hashes, strict=True)):
        if minhash.is_empty():  # no words
            kept.append(row)
            continue
        group = label(row) if by_label else ""
        if group not in indexes:
            indexes[group] = (MinHashLSH(threshold=index_threshold, num_perm=MINHASH_PERM), {})
        lsh, seen = indexes[group]
        match = min((j for j in lsh.query(minhash) if minhash.jaccard(seen[j]) >= threshold), default=None)
        if match is None:
            lsh.insert(i, minhash)
            seen[i] = minhash
            kept.append(row)
        else:
            pairs.append((rows[match], row))
    return kept, pairs
