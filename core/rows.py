"""Dataset row shapes and the rules a row must meet, defined once for upload validation and the worker.

The API checks every uploaded row against its shape (`service/validation.py`); the worker checks every row
against what its task can train before tokenizing it (`jobs/data/examples.py`) and when `data.drop_invalid`
drops rows (`jobs/data/clean.py`). Both call `row_problem`, so a row the API accepts is a row the worker
trains. A problem is (code, field, message): the code is the upload's stable `FileProblem.code`.

Preference rows (task dpo) come in two shapes: OpenAI's `{"input": {"messages": [...]}, "preferred_output": [...],
"non_preferred_output": [...]}` (each output a list of assistant messages) and `{"prompt", "chosen", "rejected"}`
(each a string, or a list of messages: the prompt's any roles, the outputs' assistant only). A pair whose two
outputs are equal teaches nothing: `identical_outputs`.

Chat messages take the roles the worker can format: system, user and assistant. A `tool` turn would need the
assistant's `tool_calls` (whose content is null) and a `tool_call_id`, which the worker does not carry to the
chat template; it is rejected at upload, naming the line and `messages[i].role`.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from ftjobs.client.models import TASK_FORMATS, FileFormat, Task

ROLES = ("system", "user", "assistant")
FIELDS: dict[FileFormat, tuple[str, ...]] = {
    FileFormat.prompt_completion: ("prompt", "completion"),
    FileFormat.source_target: ("source", "target"),
    FileFormat.text_label: ("text", "label"),
    FileFormat.text: ("text",),
}
# Fields that may be empty (a row without a prompt is still a completion to learn); the rest must not.
OPTIONAL_CONTENT = frozenset({"prompt", "source"})
INPUT_FIELDS = ("text", "prompt", "source")  # what a model reads
OUTPUT_FIELDS = ("completion", "target")  # what a model learns to write
TEXT_FIELDS = ("text", "prompt", "completion", "source", "target")
OPENAI_PREFERENCE = ("input", "preferred_output", "non_preferred_output")
PLAIN_PREFERENCE = ("prompt", "chosen", "rejected")
# every key a row shape uses; others are ignored
ROW_FIELDS = frozenset({"messages", "label", *TEXT_FIELDS, *OPENAI_PREFERENCE, *PLAIN_PREFERENCE})
KNOWN_SHAPES = (
    '"messages", "prompt"+"completion", "text"+"label", "source"+"target", "text", '
    '"input"+"preferred_output"+"non_preferred_output" or "prompt"+"chosen"+"rejected"'
)


class RowProblem(NamedTuple):
    """What is wrong with a row: a stable code, the field at fault (None: the whole row) and why."""

    code: str
    field: str | None
    message: str


def detect_format(row: dict[str, Any]) -> FileFormat | None:
    """The row shape, from its keys (extra keys are ignored)."""
    if any(k in row for k in ("preferred_output", "non_preferred_output", "chosen", "rejected")):
        return FileFormat.preference
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
    """The JSON name of a parsed value's type, for messages."""
    names = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}
    return names.get(type(value), "number")


def label_text(row: dict[str, Any]) -> str:
    """A classification row's label as the class name (an integer label is its decimal text)."""
    return str(row.get("label"))


def row_problem(fmt: FileFormat, row: dict[str, Any]) -> RowProblem | None:
    """What is wrong with a row of format `fmt`, or None."""
    if fmt == FileFormat.messages:
        return _messages_problem(row["messages"])
    if fmt == FileFormat.preference:
        return _preference_problem(row)
    for name in FIELDS[fmt]:
        if name not in row:
            if name == "label":
                return RowProblem("label_missing", "label", 'missing field "label"')
            return RowProblem("missing_field", name, f'missing field "{name}"')
        value = row[name]
        if name == "label" and (value is None or (isinstance(value, str) and not value.strip())):
            return RowProblem("label_missing", "label", '"label" is empty')
        ok = isinstance(value, str) or (name == "label" and isinstance(value, int) and not isinstance(value, bool))
        if not ok:
            expected = "a string or an integer" if name == "label" else "a string"
            return RowProblem("invalid_type", name, f'"{name}" must be {expected}, got {json_type(value)}')
        if name not in OPTIONAL_CONTENT and name != "label" and not value.strip():
            return RowProblem("empty_content", name, f'"{name}" is empty')
    return None


def _turns_problem(messages: Any, name: str, roles: tuple[str, ...] = ROLES) -> RowProblem | None:
    """A non-empty array of {role, content} objects with the allowed roles; `name` is the field as the user wrote it."""
    if not isinstance(messages, list):
        got = json_type(messages)
        return RowProblem("invalid_type", name, f'"{name}" must be a non-empty array, got {got}')
    if not messages:
        return RowProblem("empty_content", name, f'"{name}" must be a non-empty array')
    for i, msg in enumerate(messages):
        at = f"{name}[{i}]"
        if not isinstance(msg, dict):
            return RowProblem("invalid_type", at, f"{at} must be an object, got {json_type(msg)}")
        if msg.get("role") not in roles:
            allowed = f"one of {', '.join(roles)}" if len(roles) > 1 else roles[0]
            return RowProblem("unknown_role", f"{at}.role", f"{at}.role must be {allowed}")
        if not isinstance(msg.get("content"), str):
            return RowProblem("invalid_type", f"{at}.content", f"{at}.content must be a string")
    return None


def _messages_problem(messages: Any) -> RowProblem | None:
    if problem := _turns_problem(messages, "messages"):
        return problem
    answers = [m["content"] for m in messages if m["role"] == "assistant"]
    if not answers:
        return RowProblem("no_assistant_turn", "messages", "no assistant message to learn from")
    if not any(a.strip() for a in answers):
        return RowProblem("empty_content", "messages", "every assistant message is empty")
    return None


def preference_parts(row: dict[str, Any]) -> tuple[Any, Any, Any]:
    """(prompt, chosen, rejected) of a preference row in either shape (OpenAI's input.messages is the prompt)."""
    if any(k in row for k in OPENAI_PREFERENCE[1:]):
        given = row.get("input")
        prompt = given.get("messages") if isinstance(given, dict) else None
        return prompt, row.get("preferred_output"), row.get("non_preferred_output")
    return row.get("prompt"), row.get("chosen"), row.get("rejected")


def _preference_problem(row: dict[str, Any]) -> RowProblem | None:
    openai = any(k in row for k in OPENAI_PREFERENCE[1:])
    names = OPENAI_PREFERENCE if openai else PLAIN_PREFERENCE
    for name in names:
        if name not in row:
            return RowProblem("missing_field", name, f'missing field "{name}"')
    prompt, chosen, rejected = preference_parts(row)
    if openai:
        if not isinstance(row["input"], dict):
            return RowProblem("invalid_type", "input", f'"input" must be an object, got {json_type(row["input"])}')
        if "messages" not in row["input"]:
            return RowProblem("missing_field", "input.messages", 'missing field "input.messages"')
        if problem := _turns_problem(prompt, "input.messages"):
            return problem
    elif not isinstance(prompt, str) and (problem := _turns_problem(prompt, "prompt")):
        return problem  # a plain prompt may be empty: the outputs are then compared unconditioned
    for name, output in ((names[1], chosen), (names[2], rejected)):
        if isinstance(output, str) and not openai:
            if not output.strip():
                return RowProblem("empty_content", name, f'"{name}" is empty')
            continue
        if not openai and not isinstance(output, list):
            return RowProblem("invalid_type", name, f'"{name}" must be a string or an array of messages')
        if problem := _turns_problem(output, name, roles=("assistant",)):
            return problem
        if not any(m["content"].strip() for m in output):
            return RowProblem("empty_content", name, f'"{name}" has no non-empty assistant message')
    if _answer(chosen) == _answer(rejected):
        return RowProblem(
            "identical_outputs", names[2], f'"{names[1]}" and "{names[2]}" are the same: nothing to prefer'
        )
    return None


def _answer(output: Any) -> str:
    """A preference output's text (its assistant messages joined), for the identical-outputs check."""
    return output.strip() if isinstance(output, str) else "\n".join(m["content"].strip() for m in output)


def task_row_problem(task: Task, row: Any) -> RowProblem | None:
    """What is wrong with a row for training `task` (its shape must be one the task trains), or None."""
    if not isinstance(row, dict):
        return RowProblem("not_an_object", None, f"expected a JSON object, got {json_type(row)}")
    fmt = detect_format(row)
    allowed = TASK_FORMATS[task]
    if fmt is None:
        return RowProblem("unknown_shape", None, f"unknown row shape: expected {KNOWN_SHAPES} keys")
    if fmt == FileFormat.text and FileFormat.text_label in allowed:
        return RowProblem("label_missing", "label", 'missing field "label"')  # as in a text_label upload
    if fmt not in allowed:
        needs = ", ".join(sorted(allowed))
        return RowProblem("unknown_shape", None, f"a {fmt.value} row; task {task.value} trains on {needs} rows")
    return row_problem(fmt, row)
