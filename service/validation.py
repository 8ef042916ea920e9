"""Streaming validation of uploads (JSONL, or CSV converted to JSONL): line by line, bounded memory.

Feed raw bytes as they arrive to a `JsonlReader` or `CsvReader` (`service/parquet.py` adds Parquet);
at most one line (one CSV record) is held in memory, and lines over MAX_LINE_BYTES are rejected without
being buffered. Every row goes through one `RowValidator`, which numbers each problem with its line
(the user's own: a CSV line, a Parquet row), field and a stable code, counts the fixable issues
(warnings) and feeds the profile (`service/profile.py`) in the same pass. `finish()` returns the
summary or raises InvalidFile (with structured `details`) / FileTooLarge. A converted upload also
leaves a `line_map()`: where each stored JSONL row came from, so the worker's errors cite it too.
"""

from __future__ import annotations

import csv
import hashlib
import json
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from client.models import FileFormat, FileProblem, FileWarning, SourceFormat
from service.errors import FileTooLarge, InvalidFile
from service.profile import ProfileBuilder

MAX_REPORTED = 20  # problems listed in the error (the total is always given)
MAX_LINES_PER_WARNING = 5
MAX_LINE_BYTES = 16 * 1024 * 1024
ROLES = ("system", "user", "assistant", "tool")
FIELDS: dict[FileFormat, tuple[str, ...]] = {
    FileFormat.prompt_completion: ("prompt", "completion"),
    FileFormat.source_target: ("source", "target"),
    FileFormat.text_label: ("text", "label"),
    FileFormat.text: ("text",),
}
# Fields that may be empty (a row without a prompt is still a completion to learn); the rest must not.
OPTIONAL_CONTENT = frozenset({"prompt", "source"})
KNOWN_SHAPES = '"messages", "prompt"+"completion", "text"+"label", "source"+"target" or "text"'
CSV_COLUMNS = ("text", "label", "prompt", "completion", "source", "target")
MAX_LINE_BREAKS = 100_000  # CSV rows whose line is mapped exactly (blank lines and multi-line cells shift it)

Sink = Callable[[bytes], None]


def detect_format(row: dict[str, Any]) -> FileFormat | None:
    """The row shape, from its keys (extra keys are ignored)."""
    if "messages" in row:
        return FileFormat.messages
    if "prompt" in row or "completion" in row:
        return FileFormat.prompt_completion
    if "source" in row or "target" in row:
        return FileFormat.source_target
    if "label" in row:
        return FileFormat.text_label
    if "text" in row:
        return FileFormat.text
    return None


def json_type(value: Any) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}
    return names.get(type(value), "number")


def row_problem(fmt: FileFormat, row: dict[str, Any]) -> tuple[str, str, str] | None:
    """What is wrong with a row of format `fmt`, as (code, field, message), or None."""
    if fmt == FileFormat.messages:
        messages = row["messages"]
        if not isinstance(messages, list):
            return "invalid_type", "messages", f'"messages" must be a non-empty array, got {json_type(messages)}'
        if not messages:
            return "empty_content", "messages", '"messages" must be a non-empty array'
        for i, msg in enumerate(messages):
            if not isinstance(msg, dict):
                return "invalid_type", f"messages[{i}]", f"messages[{i}] must be an object, got {json_type(msg)}"
            if msg.get("role") not in ROLES:
                return "unknown_role", f"messages[{i}].role", f"messages[{i}].role must be one of {', '.join(ROLES)}"
            if not isinstance(msg.get("content"), str):
                return "invalid_type", f"messages[{i}].content", f"messages[{i}].content must be a string"
        answers = [m["content"] for m in messages if m["role"] == "assistant"]
        if not answers:
            return "no_assistant_turn", "messages", "no assistant message to learn from"
        if not any(a.strip() for a in answers):
            return "empty_content", "messages", "every assistant message is empty"
        return None
    for name in FIELDS[fmt]:
        if name not in row:
            if name == "label":
                return "label_missing", "label", 'missing field "label"'
            return "missing_field", name, f'missing field "{name}"'
        value = row[name]
        if name == "label" and (value is None or (isinstance(value, str) and not value.strip())):
            return "label_missing", "label", '"label" is empty'
        ok = isinstance(value, str) or (name == "label" and isinstance(value, int) and not isinstance(value, bool))
        if not ok:
            expected = "a string or an integer" if name == "label" else "a string"
            return "invalid_type", name, f'"{name}" must be {expected}, got {json_type(value)}'
        if name not in OPTIONAL_CONTENT and name != "label" and not value.strip():
            return "empty_content", name, f'"{name}" is empty'
    return None


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


class Reader:
    """Byte counting, the size limit and the line splitting shared by the JSONL and CSV readers."""

    source_format: ClassVar[SourceFormat] = "jsonl"  # what was uploaded (FileObject.source_format)
    unit: ClassVar[str] = "line"  # what a problem's number counts

    def __init__(self, max_bytes: int, sink: Sink | None = None) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0  # as uploaded
        self.stored_bytes = 0
        self.line_no = 0
        self.rows = RowValidator(self.unit)
        self._sink = sink
        self._sha = hashlib.sha256()  # of what is stored
        self._line = bytearray()
        self._overlong = False

    def feed(self, data: bytes) -> None:
        self.bytes += len(data)
        if self.bytes > self.max_bytes:
            raise FileTooLarge(f"The file exceeds the upload limit of {self.max_bytes} bytes.", param="file")
        start = 0
        while (end := data.find(b"\n", start)) != -1:
            self._append(data[start:end])
            self._end_line()
            start = end + 1
        self._append(data[start:])

    def finish(self, filename: str) -> UploadSummary:
        if self._line or self._overlong:  # last line without a trailing newline
            self._end_line()
        self._flush()
        fmt = self.rows.finish(filename)
        return UploadSummary(self.rows.rows, self.stored_bytes, self._sha.hexdigest(), fmt, self.rows.warnings())

    def store(self, data: bytes) -> None:
        self.stored_bytes += len(data)
        self._sha.update(data)
        if self._sink is not None:
            self._sink(data)

    def line_map(self) -> dict[str, Any] | None:
        """For a converted upload: what `jobs/data.py` needs to cite the user's line of a stored row."""
        return None

    def close(self) -> None:
        """Release what the reader holds (a temporary file); safe to call more than once."""

    def _append(self, piece: bytes) -> None:
        if self._overlong or not piece:
            return
        if len(self._line) + len(piece) > MAX_LINE_BYTES:
            self._overlong = True
            self._line.clear()
        else:
            self._line += piece

    def _end_line(self) -> None:
        self.line_no += 1
        if self._overlong:
            self.rows.problem(self.line_no, "line_too_long", f"longer than {MAX_LINE_BYTES} bytes")
        else:
            line = bytes(self._line)
            if self.line_no == 1:
                line = line.removeprefix(b"\xef\xbb\xbf")  # a UTF-8 byte order mark
            self._line_done(line)
        self._line.clear()
        self._overlong = False

    def _line_done(self, line: bytes) -> None:
        raise NotImplementedError

    def _flush(self) -> None:
        """Anything held back until the end of the stream."""


class JsonlReader(Reader):
    """JSONL: every line is stored exactly as uploaded."""

    def feed(self, data: bytes) -> None:
        super().feed(data)
        self.store(data)

    def _line_done(self, line: bytes) -> None:
        if not line.strip():
            return
        self.rows.rows += 1
        try:
            row = json.loads(line.decode("utf-8"))
        except UnicodeDecodeError:
            return self.rows.problem(self.line_no, "invalid_utf8", "not valid UTF-8")
        except json.JSONDecodeError as exc:
            return self.rows.problem(self.line_no, "invalid_json", f"invalid JSON ({exc.msg})")
        self.rows.check(self.line_no, row)


class CsvReader(Reader):
    """CSV with a header row; known columns (text, label, prompt, completion, source, target) become JSONL rows.

    A quoted cell may span lines: a record ends at a line break outside quotes. Problems are numbered
    with the CSV line the record starts on; `line_map()` keeps that line for every stored row.
    """

    source_format = "csv"

    def __init__(self, max_bytes: int, sink: Sink | None = None) -> None:
        super().__init__(max_bytes, sink)
        self.header: list[str] | None = None
        self._record: list[str] = []
        self._record_line = 0
        self._record_bytes = 0
        self._quotes = 0
        # Stored row n comes from CSV line n + offset; the offset changes at a multi-line cell or a blank
        # line, and each change is kept as (row, line): one pair for a plain file, bounded by MAX_LINE_BREAKS.
        self._stored_rows = 0
        self._offset: int | None = None
        self._breaks = array("q")  # flat (row, line) pairs
        self._mapped_rows: int | None = None  # rows mapped exactly, once MAX_LINE_BREAKS is reached

    def _line_done(self, line: bytes) -> None:
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            self.rows.rows += 1
            return self.rows.problem(self.line_no, "invalid_utf8", "not valid UTF-8")
        if not self._record:
            if not text.strip():
                return
            self._record_line = self.line_no
        self._record.append(text.removesuffix("\r"))
        self._record_bytes += len(line)
        self._quotes += text.count('"')
        if self._record_bytes > MAX_LINE_BYTES:  # an unterminated quote must not buffer the rest of the file
            self.rows.rows += 1
            self.rows.problem(self._record_line, "invalid_csv", f"a record longer than {MAX_LINE_BYTES} bytes")
            self._record, self._quotes, self._record_bytes = [], 0, 0
            return
        if self._quotes % 2 == 0:  # outside quotes: the record is complete ("" escapes keep the parity)
            self._record_done()

    def _flush(self) -> None:
        if self._record:
            self.rows.rows += 1
            self.rows.problem(self._record_line, "invalid_csv", "unterminated quoted cell")
            self._record = []

    def _record_done(self) -> None:
        record, line = "\n".join(self._record), self._record_line
        self._record, self._quotes, self._record_bytes = [], 0, 0
        try:
            cells = next(csv.reader([record]))
        except csv.Error as exc:
            self.rows.rows += 1
            return self.rows.problem(line, "invalid_csv", f"invalid CSV ({exc})")
        if self.header is None:
            self.header = [c.strip().lower() for c in cells]
            if not any(c in CSV_COLUMNS for c in self.header):
                self.rows.problem(line, "unknown_shape", f"the header names none of {', '.join(CSV_COLUMNS)}")
            return
        self.rows.rows += 1
        if len(cells) != len(self.header):
            return self.rows.problem(
                line, "invalid_csv", f"{len(cells)} cells, the header has {len(self.header)} columns"
            )
        row = {name: value for name, value in zip(self.header, cells, strict=True) if name in CSV_COLUMNS}
        problems = self.rows.problem_count
        self.rows.check(line, row)
        if self.rows.problem_count == problems:
            self.store(json.dumps(row, ensure_ascii=False).encode() + b"\n")
            self._map(line)

    def _map(self, line: int) -> None:
        self._stored_rows += 1
        offset = line - self._stored_rows
        if offset == self._offset or self._mapped_rows is not None:
            return
        if len(self._breaks) >= 2 * MAX_LINE_BREAKS:
            self._mapped_rows = self._stored_rows - 1
            return
        self._breaks.extend((self._stored_rows, line))
        self._offset = offset

    def line_map(self) -> dict[str, Any]:
        """`lines`: [[row, CSV line], ...] where the offset changes; rows past `mapped_rows` cite their index."""
        pairs = self._breaks.tolist()
        out: dict[str, Any] = {"source_format": "csv", "lines": [pairs[i : i + 2] for i in range(0, len(pairs), 2)]}
        if self._mapped_rows is not None:
            out["mapped_rows"] = self._mapped_rows
        return out


def media_type(content_type: str | None) -> str:
    return (content_type or "").split(";")[0].strip().lower()


def is_csv(filename: str, content_type: str | None = None) -> bool:
    return filename.lower().endswith(".csv") or media_type(content_type) == "text/csv"
