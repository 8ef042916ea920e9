"""Rows as the worker reads them: each with the file and the user's own line, checked by the shared row rules.

The rules are `ftjobs.core.rows`, the same the API applied at upload: a problem is a DataError naming the file,
the line and the field (`training_file line 3: messages[1].role must be one of system, user, assistant`).
Lines are read with a bounded readline: one longer than the row limit (FTJOBS_MAX_ROW_BYTES, as at upload) fails
the job with `row_too_large` as soon as the limit is passed, before the line is held or parsed.
"""

from __future__ import annotations

import bisect
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ftjobs.client.models import Task
from ftjobs.core.rows import label_text, task_row_problem
from ftjobs.core.settings import Settings
from ftjobs.jobs.errors import DataError, RowTooLarge


@dataclass
class Row:
    line: int  # 1-based line (or row) number in the file as the user uploaded it, for error messages
    data: dict[str, Any]
    file: str  # "training_file" or "validation_file"
    unit: str = "line"  # "line" (JSONL), "CSV line", "Parquet row": what `line` counts

    def where(self) -> str:
        return f"{self.file} {self.unit} {self.line}"


@dataclass
class LineMap:
    """Where each stored JSONL row of a CSV or Parquet upload came from (the API's `<file>.lines.json`).

    CSV: `lines` = [[row, CSV line], ...] at every row where the offset between the two changes (a
    multi-line cell, a blank line); rows past `mapped_rows` (a very irregular file) cite their CSV row
    number instead. Parquet: stored row n is Parquet row n.
    """

    source_format: str
    lines: list[list[int]] = field(default_factory=list)
    mapped_rows: int | None = None

    @classmethod
    def load(cls, path: Path) -> LineMap:
        raw = json.loads(path.read_text(encoding="utf-8"))
        return cls(raw.get("source_format", "jsonl"), raw.get("lines") or [], raw.get("mapped_rows"))

    def locate(self, row: int) -> tuple[str, int]:
        """(unit, number) of the 1-based stored row in the uploaded file."""
        if self.source_format == "parquet":
            return "Parquet row", row
        if self.source_format != "csv":
            return "line", row
        if not self.lines or (self.mapped_rows is not None and row > self.mapped_rows):
            return "CSV row", row
        i = bisect.bisect_right(self.lines, row, key=lambda pair: pair[0]) - 1
        first_row, first_line = self.lines[max(i, 0)]
        return "CSV line", first_line + row - first_row


def read_jsonl(path: Path, file: str, lines: LineMap | None = None, max_row_bytes: int | None = None) -> list[Row]:
    """Non-empty lines of a JSONL file, each a JSON object; `lines` numbers them as the user's CSV/Parquet.

    `max_row_bytes` defaults to this worker's FTJOBS_MAX_ROW_BYTES.
    """
    limit = Settings.from_env().max_row_bytes if max_row_bytes is None else max_row_bytes
    rows: list[Row] = []
    with path.open("rb") as fh:
        n = 0
        while raw := fh.readline(limit + 2):  # the line and its \r\n, or a byte past the limit
            n += 1
            if n == 1:
                raw = raw.removeprefix(b"\xef\xbb\xbf")  # a UTF-8 byte order mark, as the API reads it
            unit, number = lines.locate(n) if lines is not None else ("line", n)
            where = f"{file} {unit} {number}"
            if len(raw.rstrip(b"\r\n")) > limit:
                raise RowTooLarge(
                    f"{where}: longer than the row limit of {limit} bytes (FTJOBS_MAX_ROW_BYTES)", param=where
                )
            if not raw.strip():
                continue
            try:
                value = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError:
                raise DataError(f"{where}: not valid UTF-8", param=where) from None
            except json.JSONDecodeError as e:
                raise DataError(f"{where}: not valid JSON ({e.msg})", param=where) from None
            if not isinstance(value, dict):
                raise DataError(f"{where}: expected a JSON object", param=where)
            rows.append(Row(number, value, file, unit))
    return rows


def check_row(row: Row, task: Task) -> None:
    """A DataError naming the row's file, line and field when it is not a row `task` trains on."""
    if problem := task_row_problem(task, row.data):
        raise DataError(f"{row.where()}: {problem.message}", param=row.where())


def label_of(row: Row) -> str:
    """A classification row's label (checked)."""
    check_row(row, Task.classification)
    return label_text(row.data)


def source_target(row: Row) -> tuple[str, str]:
    """A seq2seq row's source and target (checked)."""
    check_row(row, Task.seq2seq)
    return row.data["source"], row.data["target"]
