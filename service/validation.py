"""Row checks of uploads: each row against its shape, problems numbered by line, warnings, profile.

The readers (`service/readers.py`: JSONL, CSV; `service/parquet.py`) feed every row to one `RowValidator`,
which numbers each problem with its line (the user's own: a CSV line, a Parquet row), field and a stable
code, counts the fixable issues (warnings) and feeds the profile (`service/profile.py`) in the same pass.
The row rules themselves are `ftjobs.core.rows`, which the worker applies too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any

from ftjobs.client.models import FileFormat, FileProblem, FileWarning
from ftjobs.core.rows import FIELDS, KNOWN_SHAPES, OPTIONAL_CONTENT, detect_format, json_type, row_problem
from ftjobs.service.errors import InvalidFile
from ftjobs.service.profile import ProfileBuilder

MAX_REPORTED = 20  # problems listed in the error (the total is always given)
MAX_LINES_PER_WARNING = 5


# Formats whose rows `RowValidator.check_rows` checks by column: their fields, each a string (a label may be an int).
COLUMN_FORMATS: dict[FileFormat, tuple[str, ...]] = {
    fmt: FIELDS[fmt]
    for fmt in (FileFormat.prompt_completion, FileFormat.source_target, FileFormat.text_label, FileFormat.text)
}


def _labels_valid(labels: list[Any]) -> bool:
    """Every label a non-blank string or an integer (not a boolean), as `row_problem` has it."""
    types = set(map(type, labels))
    if not types <= {str, int}:
        return False
    strings = labels if types == {str} else [v for v in labels if type(v) is str]
    return "" not in strings and True not in map(str.isspace, strings)


def _indices(flags: list[bool], order: int, code: str, name: str | None) -> tuple[int, int, str, str | None, list[int]]:
    indices = [i for i, flag in enumerate(flags) if flag]
    return indices[0], order, code, name, indices


@dataclass
class UploadSummary:
    rows: int
    bytes: int
    sha256: str
    format: FileFormat
    warnings: list[FileWarning] = field(default_factory=list)


class RowValidator:
    """Checks parsed rows; keeps the first problems, counts warnings, feeds the profile."""

    def __init__(self, unit: str = "line") -> None:
        self.unit = unit  # what a problem's number counts: "line" (JSONL, CSV) or "row" (Parquet)
        self.rows = 0
        self.problems: list[FileProblem] = []
        self.problem_count = 0
        self.first_bad_line: int | None = None
        self.format: FileFormat | None = None
        self.format_line = 0
        self.profile = ProfileBuilder()
        self._warn: dict[tuple[str, str | None], list[int]] = {}  # (code, field) -> [count, first lines...]

    def problem(self, line: int, code: str, message: str, field: str | None = None) -> None:
        self.problem_count += 1
        self.first_bad_line = self.first_bad_line or line
        if len(self.problems) < MAX_REPORTED:
            self.problems.append(FileProblem(line=line, field=field, code=code, message=message))

    def warn(self, line: int, code: str, field: str | None = None) -> None:
        entry = self._warn.setdefault((code, field), [0])
        entry[0] += 1
        if len(entry) <= MAX_LINES_PER_WARNING:
            entry.append(line)

    def check(self, line: int, row: Any) -> None:
        """One parsed row (`line` is 1-based)."""
        if not isinstance(row, dict):
            return self.problem(line, "not_an_object", f"expected a JSON object, got {json_type(row)}")
        fmt = detect_format(row)
        if fmt is None:
            return self.problem(line, "unknown_shape", f"unknown row shape: expected {KNOWN_SHAPES} keys")
        if self.format == FileFormat.text_label and fmt == FileFormat.text:
            return self.problem(line, "label_missing", 'missing field "label"', "label")
        if problem := row_problem(fmt, row):
            code, name, message = problem
            return self.problem(line, code, message, name)
        if self.format is None:
            self.format, self.format_line = fmt, line
        elif fmt != self.format:
            where = f"{self.unit} {self.format_line}"
            return self.problem(
                line,
                "mixed_formats",
                f"row format {fmt.value} differs from {self.format.value} ({where}); one per file",
            )
        self._observe(line, fmt, row)

    def check_rows(self, first_line: int, rows: list[Any]) -> None:
        """Rows parsed from consecutive lines, the first at `first_line`: what `check` does to each, by column for a
        batch of rows of the file's format with exactly its string fields (`_check_columns`), else row by row."""
        done = 0
        while self.format is None and done < len(rows):  # the first valid row sets the file's format
            self.check(first_line + done, rows[done])
            done += 1
        if done:
            rows, first_line = rows[done:], first_line + done
        if rows and not self._check_columns(first_line, rows):
            for line, row in enumerate(rows, first_line):
                self.check(line, row)

    def _check_columns(self, first_line: int, rows: list[Any]) -> bool:
        """The checks, warnings and profile of `rows` in C loops (map, count, set), when every row is an object
        with exactly the fields of the file's format (COLUMN_FORMATS) and each is valid; False (nothing done)
        otherwise, for `check` to find and word what is wrong, row by row."""
        names = COLUMN_FORMATS.get(self.format)  # type: ignore[arg-type]
        if names is None or set(map(type, rows)) != {dict} or set(map(len, rows)) != {len(names)}:
            return False
        try:
            columns = {name: list(map(itemgetter(name), rows)) for name in names}
        except KeyError:  # another field in place of one of these
            return False
        blanks: dict[str, list[bool]] = {}
        for name, values in columns.items():
            if name == "label":
                if not _labels_valid(values):
                    return False
                continue
            if set(map(type, values)) != {str}:
                return False
            blanks[name] = [not v or v.isspace() for v in values] if "" in values else list(map(str.isspace, values))
            if name not in OPTIONAL_CONTENT and True in blanks[name]:
                return False
        assert self.format is not None
        found: list[tuple[int, int, str, str | None, list[int]]] = []  # (first index, order, code, field, indices)
        if duplicates := self.profile.add_columns(self.format, columns, len(rows)):
            found.append((duplicates[0], 0, "duplicate_row", None, duplicates))
        for name, flags in blanks.items():
            if name in OPTIONAL_CONTENT and True in flags:
                found.append(_indices(flags, 1, "empty_optional_field", name))
        labels = columns.get("label", [])
        stripped = [v.strip() if type(v) is str else v for v in labels] if str in set(map(type, labels)) else labels
        if stripped != labels:
            flags = [a != b for a, b in zip(stripped, labels, strict=True)]
            found.append(_indices(flags, 2, "label_whitespace", "label"))
        for _, _, code, at, indices in sorted(found, key=lambda f: f[:2]):  # first seen first, as row by row
            entry = self._warn.setdefault((code, at), [0])
            entry[0] += len(indices)
            entry += [first_line + i for i in indices[: MAX_LINES_PER_WARNING + 1 - len(entry)]]
        return True

    def _observe(self, line: int, fmt: FileFormat, row: dict[str, Any]) -> None:
        """Count the fixable things that become warnings, and profile the row."""
        if self.profile.add(fmt, row):
            self.warn(line, "duplicate_row")
        for name in FIELDS.get(fmt, ()):
            if name in OPTIONAL_CONTENT and not row[name].strip():
                self.warn(line, "empty_optional_field", name)
        if fmt == FileFormat.text_label and isinstance(row["label"], str) and row["label"] != row["label"].strip():
            self.warn(line, "label_whitespace", "label")
        if fmt == FileFormat.messages and any(not m["content"].strip() for m in row["messages"]):
            self.warn(line, "empty_message", "messages")

    def finish(self, filename: str) -> FileFormat:
        if self.problem_count:
            listed = "; ".join(f"{self.unit} {p.line}: {p.message}" for p in self.problems)
            more = self.problem_count - len(self.problems)
            listed += f"; ... and {more} more" if more else ""
            noun = "problem" if self.problem_count == 1 else "problems"
            raise InvalidFile(
                f"{filename}: {self.problem_count} {noun}: {listed}",
                param=f"{self.unit} {self.first_bad_line}",
                details=self.problems,
                total=self.problem_count,
            )
        if self.rows == 0 or self.format is None:
            raise InvalidFile(
                f"{filename}: the file is empty (no rows).",
                param="file",
                details=[FileProblem(line=None, field=None, code="empty_file", message="the file has no rows")],
                total=1,
            )
        return self.format

    def warnings(self) -> list[FileWarning]:
        texts = {
            "duplicate_row": "{n} duplicate row(s)",
            "empty_optional_field": '{n} row(s) with an empty "{f}"',
            "label_whitespace": '{n} row(s) with leading/trailing whitespace in "label"',
            "empty_message": "{n} conversation(s) with an empty message",
        }
        out = [
            FileWarning(
                code=code, field=f, count=entry[0], lines=entry[1:], message=texts[code].format(n=entry[0], f=f)
            )
            for (code, f), entry in self._warn.items()
        ]
        labels = self.profile.label_counts
        if self.format == FileFormat.text_label and len(labels) == 1:
            label = next(iter(labels))
            out.append(
                FileWarning(
                    code="single_label",
                    field="label",
                    count=self.rows,
                    message=f"every row has the same label ({label!r})",
                )
            )
        return out
