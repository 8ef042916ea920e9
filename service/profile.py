"""Dataset profiles: rows, columns, labels, lengths, duplicates — built in the upload's single streaming pass.

Memory stays bounded by what is distinct, not by the file: lengths are histograms (one counter per
distinct length), duplicates are 8-byte digests of the first MAX_TRACKED_ROWS rows. The profile is
stored as JSON next to the dataset (`service/file_profiles.py` saves and loads it). Row validation builds
on this module, never the other way round.
"""

from __future__ import annotations

import json
from collections import Counter
from itertools import repeat
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


def row_digest(known: dict[str, Any]) -> int:
    """A 64-bit digest of a row's known fields, for counting duplicates within one upload (kept in memory only:
    Python's keyed hash). Fields of strings and integers (every shape but chat and preference rows) hash as
    (names, values), which `ProfileBuilder.add_columns` computes for a whole batch at once; others as canonical
    JSON."""
    names = tuple(sorted(known))
    values = tuple([known[k] for k in names])
    if all(type(v) is str or type(v) is int for v in values):
        return hash((names, values))
    try:  # orjson: ~5x json.dumps; an integer past 64 bits (orjson refuses it) goes through json
        data = orjson.dumps(known, option=orjson.OPT_SORT_KEYS)
    except TypeError:
        data = json.dumps(known, sort_keys=True, ensure_ascii=False).encode()
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
        digest = row_digest(known)
        duplicate = digest in self._rows_seen
        self._rows_seen.add(digest)
        self.exact_duplicates += duplicate
        if label is not None:
            self._text_label(row["text"], label)
        return duplicate

    def _text_label(self, text: str, label: str) -> None:
        key = hash(text)
        if key in self._text_labels:
            self.duplicate_texts += 1
            self.conflicting_labels += self._text_labels[key] != label
        else:
            self._text_labels[key] = label

    def add_columns(self, fmt: FileFormat, columns: dict[str, list[Any]], count: int) -> list[int]:
        """Profile `count` valid rows given by column: each row has exactly the fields of `columns` (strings, and a
        label that may be an integer), which are FIELDS[fmt]. The same figures as `add` row by row, in C loops
        (map, Counter.update, set operations) rather than a Python call per row; returns the indices of the rows
        that duplicate an earlier row."""
        start, self.rows, self.format = self.rows, self.rows + count, fmt
        if len(self.columns) < MAX_COLUMNS:
            self.columns.update(columns)
        for name in PROFILE_FIELDS[fmt]:
            values = columns[name]
            if blank := values.count("") + list(map(str.isspace, values)).count(True):
                self.empty[name] += blank
            if name not in self.chars:
                self.chars[name], self.words[name] = Counter(), Counter()
            self.chars[name].update(map(len, values))
            self.words[name].update(map(len, map(str.split, values)))
        labels: list[str] = []
        if fmt is FileFormat.text_label:
            labels = list(map(str, columns["label"]))
            batch = Counter(labels)
            if len(self.label_counts) + len(batch) <= MAX_DISTINCT_LABELS:
                self.label_counts.update(batch)
            else:
                for label in labels:
                    if label in self.label_counts or len(self.label_counts) < MAX_DISTINCT_LABELS:
                        self.label_counts[label] += 1
        tracked = max(0, min(count, MAX_TRACKED_ROWS - start))
        if not tracked:
            return []
        names = tuple(sorted(columns))
        rows = zip(*(columns[k] if tracked == count else columns[k][:tracked] for k in names), strict=True)
        digests = list(map(hash, zip(repeat(names), rows)))  # row_digest of each row
        duplicates: list[int] = []
        seen = self._rows_seen
        if seen.isdisjoint(digests) and len(set(digests)) == tracked:
            seen.update(digests)
        else:  # some row repeats one: which
            for i, digest in enumerate(digests):
                if digest in seen:
                    duplicates.append(i)
                else:
                    seen.add(digest)
            self.exact_duplicates += len(duplicates)
        if labels:
            for text, label in zip(columns["text"][:tracked], labels[:tracked], strict=True):
                self._text_label(text, label)
        return duplicates

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
