"""Row checks of uploads: each row against its task's shape, problems numbered by line, warnings, profile.

The readers (`service/readers.py`: JSONL, CSV; `service/parquet.py`) feed every row to one `RowValidator`,
which numbers each problem with its line (the user's own: a CSV line, a Parquet row), field and a stable
code, counts the fixable issues (warnings) and feeds the profile (`service/profile.py`) in the same pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ftjobs.client.models import FileFormat, FileProblem, FileWarning
from ftjobs.service.errors import InvalidFile
from ftjobs.service.profile import ProfileBuilder

MAX_REPORTED = 20  # problems listed in the error (the total is always given)
MAX_LINES_PER_WARNING = 5
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
