"""Dataset profiles: rows, columns, labels, lengths, duplicates — built in the upload's single streaming pass.

Memory stays bounded by what is distinct, not by the file: lengths are histograms (one counter per
distinct length), duplicates are 8-byte digests of the first MAX_TRACKED_ROWS rows. The profile is
stored as JSON next to the dataset (`service/file_profiles.py` saves and loads it). Row validation builds
on this module, never the other way round.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import orjson

from ftjobs.client.models import FieldProfile, FileFormat, FileProfile, LabelCount, LengthStats
from ftjobs.core.rows import ROW_FIELDS, preference_parts

MAX_TRACKED_ROWS = 1_000_000  # rows whose digests are kept for duplicate counting
MAX_DISTINCT_LABELS = 10_000
MAX_COLUMNS = 100
PROFILE_FIELDS: dict[FileFormat, tuple[str, ...]] = {
    FileFormat.messages: ("messages",),
    FileFormat.prompt_completion: ("prompt", "completion"),
    FileFormat.source_target: ("source", "target"),
    FileFormat.text_label: ("text",),
    FileFormat.text: ("text",),
    FileFormat.preference: ("prompt", "chosen", "rejected"),  # either shape (OpenAI's input/preferred/non_preferred)
}


def _digest(value: Any) -> int:
    """A 64-bit digest of a row's canonical JSON, for counting duplicates within one upload (kept in memory only:
    Python's keyed hash serves, at a tenth of blake2b's cost)."""
    try:  # orjson: ~5x json.dumps; an integer past 64 bits (orjson refuses it) goes through json
        data = orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    except TypeError:
        data = json.dumps(value, sort_keys=True, ensure_ascii=False).encode()
    return hash(data)


def length_stats(histogram: Counter[int]) -> LengthStats | None:
    """min/mean/median/p95/max of a {length: count} histogram (p95: nearest rank)."""
    n = sum(histogram.values())
    if n == 0:
        return None
    ordered = sorted(histogram.items())

    def at_rank(rank: int) -> float:  # the rank-th smallest length, 1-based
        seen = 0
        for length, count in ordered:
            seen += count
            if seen >= rank:
                return float(length)
        return float(ordered[-1][0])

    mean = sum(length * count for length, count in ordered) / n
    return LengthStats(
        min=ordered[0][0],
        mean=round(mean, 3),
        median=(at_rank((n + 1) // 2) + at_rank(n // 2 + 1)) / 2,
        p95=at_rank(-(-95 * n // 100)),
        max=ordered[-1][0],
    )


class ProfileBuilder:
    """Accumulates a FileProfile row by row."""

    def __init__(self) -> None:
        self.rows = 0
        self.format: FileFormat | None = None
        self.columns: set[str] = set()
        self.label_counts: Counter[str] = Counter()
        self.chars: dict[str, Counter[int]] = {}
        self.words: dict[str, Counter[int]] = {}
        self.empty: Counter[str] = Counter()
        self.exact_duplicates = 0
        self.duplicate_texts = 0
        self.conflicting_labels = 0
        self._rows_seen: set[int] = set()
        self._text_labels: dict[int, str] = {}

    def add(self, fmt: FileFormat, row: dict[str, Any]) -> bool:
        """Profile one valid row; True if it duplicates an earlier row exactly."""
        # Once per row of a million-row upload: `is` on the enum (its `==` is slower), no per-row containers.
        self.rows += 1
        self.format = fmt
        if len(self.columns) < MAX_COLUMNS:
            self.columns.update(row if len(row) <= MAX_COLUMNS else list(row)[:MAX_COLUMNS])
        fields = PROFILE_FIELDS[fmt]
        for name in fields:
            if name == "messages":
                value = "\n".join(m["content"] for m in row["messages"])
            elif fmt is FileFormat.preference:  # a string, or messages: their contents together
                part = preference_parts(row)[fields.index(name)]
                value = part if isinstance(part, str) else "\n".join(m["content"] for m in part)
            else:
                value = row[name]
            if not value.strip():
                self.empty[name] += 1
            if name not in self.chars:  # not setdefault: a Counter made per row costs more than the rest
                self.chars[name], self.words[name] = Counter(), Counter()
            self.chars[name][len(value)] += 1
            self.words[name][len(value.split())] += 1
        label = None
        if fmt is FileFormat.text_label:
            label = str(row["label"])
            if label in self.label_counts or len(self.label_counts) < MAX_DISTINCT_LABELS:
                self.label_counts[label] += 1
        if self.rows > MAX_TRACKED_ROWS:
            return False
        # Extra keys do not make a row distinct.
        known = row if ROW_FIELDS.issuperset(row) else {k: row[k] for k in row if k in ROW_FIELDS}
        digest = _digest(known)
        duplicate = digest in self._rows_seen
        self._rows_seen.add(digest)
        self.exact_duplicates += duplicate
        if label is not None:
            text = _digest(row["text"])
            if text in self._text_labels:
                self.duplicate_texts += 1
                self.conflicting_labels += self._text_labels[text] != label
            else:
                self._text_labels[text] = label
        return duplicate

    def build(self, file_id: str) -> FileProfile:
        assert self.format is not None
        labels = None
        if self.format == FileFormat.text_label:
            total = sum(self.label_counts.values()) or 1
            labels = [
                LabelCount(label=label, count=count, fraction=round(count / total, 6))
                for label, count in self.label_counts.most_common()
            ]
        notes = []
        if self.rows > MAX_TRACKED_ROWS:
            notes.append(f"duplicates were counted in the first {MAX_TRACKED_ROWS} rows only")
        text_label = self.format == FileFormat.text_label
        return FileProfile(
            file_id=file_id,
            rows=self.rows,
            format=self.format,
            columns=sorted(self.columns),
            fields=[
                FieldProfile(
                    name=name,
                    empty=self.empty[name],
                    chars=length_stats(self.chars[name]),
                    words=length_stats(self.words[name]),
                )
                for name in PROFILE_FIELDS[self.format]
            ],
            labels=labels,
            exact_duplicates=self.exact_duplicates,
            duplicate_texts=self.duplicate_texts if text_label else None,
            conflicting_labels=self.conflicting_labels if text_label else None,
            notes=notes,
        )
