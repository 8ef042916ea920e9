"""Streaming structural validation of JSONL uploads: line by line, bounded memory, every problem numbered.

Feed raw bytes as they arrive; at most one line is held in memory (and lines over MAX_LINE_BYTES are
rejected without being buffered). `finish()` returns the summary or raises InvalidFile / FileTooLarge.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from client.models import FileFormat
from service.errors import FileTooLarge, InvalidFile

MAX_REPORTED = 20  # problems listed in the error message (the total is always given)
MAX_LINE_BYTES = 16 * 1024 * 1024
MAX_DEDUP_ROWS = 1_000_000  # rows whose digest is kept for duplicate counting (8 bytes each)
MAX_DISTINCT_LABELS = 10_000
ROLES = ("system", "user", "assistant", "tool")
FIELDS: dict[FileFormat, tuple[str, ...]] = {
    FileFormat.prompt_completion: ("prompt", "completion"),
    FileFormat.source_target: ("source", "target"),
    FileFormat.text_label: ("text", "label"),
    FileFormat.text: ("text",),
}
KNOWN_SHAPES = '"messages", "prompt"+"completion", "text"+"label", "source"+"target" or "text"'


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


def row_problem(fmt: FileFormat, row: dict[str, Any]) -> str | None:
    """What is structurally wrong with a row of format `fmt`, or None."""
    if fmt == FileFormat.messages:
        messages = row["messages"]
        if not isinstance(messages, list) or not messages:
            return '"messages" must be a non-empty array'
        for i, msg in enumerate(messages):
            if not isinstance(msg, dict):
                return f"messages[{i}] must be an object, got {json_type(msg)}"
            if msg.get("role") not in ROLES:
                return f"messages[{i}].role must be one of {', '.join(ROLES)}"
            if not isinstance(msg.get("content"), str):
                return f"messages[{i}].content must be a string"
        return None
    for name in FIELDS[fmt]:
        if name not in row:
            return f'missing field "{name}"'
        value = row[name]
        ok = isinstance(value, str) or (
            name == "label" and isinstance(value, int) and not isinstance(value, bool)
        )
        if not ok:
            expected = "a string or an integer" if name == "label" else "a string"
            return f'"{name}" must be {expected}, got {json_type(value)}'
    return None


@dataclass
class UploadSummary:
    rows: int
    bytes: int
    sha256: str
    format: FileFormat
    warnings: list[str] = field(default_factory=list)


class JsonlValidator:
    """Validates a JSONL stream fed in arbitrary chunks."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self.rows = 0
        self.line_no = 0
        self.problems: list[str] = []
        self.problem_count = 0
        self.first_bad_line: int | None = None
        self.format: FileFormat | None = None
        self.format_line = 0
        self._sha = hashlib.sha256()
        self._line = bytearray()
        self._overlong = False
        self._seen: set[bytes] = set()
        self._duplicates = 0
        self._empty: dict[str, int] = {}
        self._padded_labels = 0
        self._labels: set[str | int] = set()
        self._no_assistant = 0

    def feed(self, data: bytes) -> None:
        self.bytes += len(data)
        if self.bytes > self.max_bytes:
            raise FileTooLarge(f"The file exceeds the upload limit of {self.max_bytes} bytes.", param="file")
        self._sha.update(data)
        start = 0
        while (end := data.find(b"\n", start)) != -1:
            self._append(data[start:end])
            self._end_line()
            start = end + 1
        self._append(data[start:])

    def finish(self, filename: str) -> UploadSummary:
        if self._line or self._overlong:  # last line without a trailing newline
            self._end_line()
        if self.problem_count:
            more = self.problem_count - len(self.problems)
            listed = "; ".join(self.problems) + (f"; ... and {more} more" if more else "")
            noun = "problem" if self.problem_count == 1 else "problems"
            raise InvalidFile(
                f"{filename}: {self.problem_count} {noun}: {listed}", param=f"line {self.first_bad_line}"
            )
        if self.rows == 0 or self.format is None:
            raise InvalidFile(f"{filename}: the file is empty (no JSONL rows).", param="file")
        return UploadSummary(self.rows, self.bytes, self._sha.hexdigest(), self.format, self._warnings())

    # ------------------------------------------------------------------ internals

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
            self._problem(f"longer than {MAX_LINE_BYTES} bytes")
        else:
            line = bytes(self._line)
            if self.line_no == 1:
                line = line.removeprefix(b"\xef\xbb\xbf")  # a UTF-8 byte order mark
            self._check(line)
        self._line.clear()
        self._overlong = False

    def _problem(self, message: str) -> None:
        self.problem_count += 1
        self.first_bad_line = self.first_bad_line or self.line_no
        if len(self.problems) < MAX_REPORTED:
            self.problems.append(f"line {self.line_no}: {message}")

    def _check(self, line: bytes) -> None:
        if not line.strip():
            return
        self.rows += 1
        try:
            row = json.loads(line.decode("utf-8"))
        except UnicodeDecodeError:
            return self._problem("not valid UTF-8")
        except json.JSONDecodeError as exc:
            return self._problem(f"invalid JSON ({exc.msg})")
        if not isinstance(row, dict):
            return self._problem(f"expected a JSON object, got {json_type(row)}")
        fmt = detect_format(row)
        if fmt is None:
            return self._problem(f"unknown row shape: expected {KNOWN_SHAPES} keys")
        if problem := row_problem(fmt, row):
            return self._problem(problem)
        if self.format is None:
            self.format, self.format_line = fmt, self.line_no
        elif fmt != self.format:
            where = f"line {self.format_line}"
            return self._problem(
                f"row format {fmt.value} differs from {self.format.value} ({where}); one per file"
            )
        self._observe(fmt, row, line)

    def _observe(self, fmt: FileFormat, row: dict[str, Any], line: bytes) -> None:
        """Count the fixable things that become warnings."""
        if self.rows <= MAX_DEDUP_ROWS:
            # textual duplicates (after trimming the line): cheap, and what copy-pasted rows look like
            digest = hashlib.blake2b(line.strip(), digest_size=8).digest()
            if digest in self._seen:
                self._duplicates += 1
            self._seen.add(digest)
        for name in FIELDS.get(fmt, ()):
            if isinstance(row[name], str) and not row[name].strip():
                self._empty[name] = self._empty.get(name, 0) + 1
        if fmt == FileFormat.text_label:
            label = row["label"]
            if isinstance(label, str) and label != label.strip():
                self._padded_labels += 1
            if len(self._labels) < MAX_DISTINCT_LABELS:
                self._labels.add(label.strip() if isinstance(label, str) else label)
        if fmt == FileFormat.messages and not any(m["role"] == "assistant" for m in row["messages"]):
            self._no_assistant += 1

    def _warnings(self) -> list[str]:
        warnings = []
        if self._duplicates:
            warnings.append(f"{self._duplicates} duplicate row(s)")
        for name, count in self._empty.items():
            warnings.append(f'{count} row(s) with an empty "{name}"')
        if self._padded_labels:
            warnings.append(f'{self._padded_labels} row(s) with leading/trailing whitespace in "label"')
        if self.format == FileFormat.text_label and len(self._labels) == 1:
            warnings.append(f"every row has the same label ({next(iter(self._labels))!r})")
        if self._no_assistant:
            warnings.append(f"{self._no_assistant} conversation(s) without an assistant message")
        if self.rows > MAX_DEDUP_ROWS:
            warnings.append(f"duplicates were counted in the first {MAX_DEDUP_ROWS} rows only")
        return warnings
