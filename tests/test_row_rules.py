"""One set of row rules (ftjobs.core.rows): the API's upload checks and the worker accept and refuse the same rows."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ftjobs.client.models import DataOptions, Task
from ftjobs.jobs.data.examples import build_datasets
from ftjobs.jobs.data.prepare import prepare_data
from ftjobs.jobs.data.read import Row, read_jsonl
from ftjobs.jobs.errors import DataError
from ftjobs.service.errors import InvalidFile
from ftjobs.service.readers import JsonlReader
from tests.tiny_models import build_tiny_tokenizer

USER = {"role": "user", "content": "hi"}
ANSWER = {"role": "assistant", "content": "hello"}
GOOD: dict[Task, list[dict[str, Any]]] = {
    Task.causal_lm: [{"messages": [USER, ANSWER]}, {"messages": [USER, ANSWER]}],
    Task.classification: [{"text": "a", "label": "x"}, {"text": "b", "label": "y"}],
    Task.seq2seq: [{"source": "a", "target": "b"}, {"source": "c", "target": "d"}],
}
PROMPTS = [{"prompt": "a", "completion": "b"}, {"prompt": "c", "completion": "d"}]
TEXTS = [{"text": "one two"}, {"text": "three four"}]

# (task, the file's valid rows, the row under test, the field the API and the worker name; None: both accept)
CASES: dict[str, tuple[Task, list[dict[str, Any]], dict[str, Any], str | None]] = {
    "tool_role": (
        Task.causal_lm,
        GOOD[Task.causal_lm],
        {"messages": [USER, {"role": "tool", "content": "42"}, ANSWER]},
        "messages[1].role",
    ),
    "unknown_role": (
        Task.causal_lm,
        GOOD[Task.causal_lm],
        {"messages": [{"role": "bot", "content": "x"}]},
        "messages[0].role",
    ),
    "no_assistant": (Task.causal_lm, GOOD[Task.causal_lm], {"messages": [USER]}, "messages"),
    "empty_answer": (Task.causal_lm, GOOD[Task.causal_lm], {"messages": [USER, {**ANSWER, "content": ""}]}, "messages"),
    "content_not_a_string": (
        Task.causal_lm,
        GOOD[Task.causal_lm],
        {"messages": [USER, {"role": "assistant", "content": None}]},
        "messages[1].content",
    ),
    "system_user_assistant": (
        Task.causal_lm,
        GOOD[Task.causal_lm],
        {"messages": [{"role": "system", "content": "be brief"}, USER, ANSWER]},
        None,
    ),
    "empty_prompt": (Task.causal_lm, PROMPTS, {"prompt": "", "completion": "b"}, None),
    "blank_completion": (Task.causal_lm, PROMPTS, {"prompt": "a", "completion": "  "}, "completion"),
    "missing_completion": (Task.causal_lm, PROMPTS, {"prompt": "a"}, "completion"),
    "completion_number": (Task.causal_lm, PROMPTS, {"prompt": "a", "completion": 3}, "completion"),
    "blank_text": (Task.causal_lm, TEXTS, {"text": " "}, "text"),
    "empty_source": (Task.seq2seq, GOOD[Task.seq2seq], {"source": "", "target": "b"}, None),
    "blank_target": (Task.seq2seq, GOOD[Task.seq2seq], {"source": "a", "target": " "}, "target"),
    "integer_label": (Task.classification, GOOD[Task.classification], {"text": "c", "label": 3}, None),
    "blank_label": (Task.classification, GOOD[Task.classification], {"text": "c", "label": " "}, "label"),
    "no_label": (Task.classification, GOOD[Task.classification], {"text": "c"}, "label"),
    "list_label": (Task.classification, GOOD[Task.classification], {"text": "c", "label": [1]}, "label"),
    "blank_text_label": (Task.classification, GOOD[Task.classification], {"text": "", "label": "x"}, "text"),
}


@pytest.fixture(scope="module")
def tokenizer():  # type: ignore[no-untyped-def]
    return build_tiny_tokenizer()


def api_problem(content: bytes) -> tuple[int | None, str | None, str] | None:
    """The upload's first problem as (line, field, message), or None when the API accepts the file."""
    reader = JsonlReader(max_bytes=2**30)
    reader.feed(content)
    try:
        reader.finish("rows.jsonl")
    except InvalidFile as e:
        assert e.details
        return e.details[0].line, e.details[0].field, e.details[0].message
    return None


def worker_problem(path: Path, task: Task, tokenizer: Any) -> str | None:
    """The worker's DataError for the same file, or None when it tokenizes every row."""
    try:
        build_datasets(task, tokenizer, read_jsonl(path, "training_file"), None, 64, 0.0, 0)
    except DataError as e:
        return e.message
    return None


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_api_and_the_worker_agree_on_a_row(case: str, tokenizer: Any, tmp_path: Path) -> None:
    task, good, row, field = CASES[case]
    content = "".join(json.dumps(r) + "\n" for r in [*good, row]).encode()
    path = tmp_path / "rows.jsonl"
    path.write_bytes(content)
    api, worker = api_problem(content), worker_problem(path, task, tokenizer)
    if field is None:
        assert api is None and worker is None, (api, worker)
        return
    assert api is not None and worker is not None, (api, worker)
    line, api_field, message = api
    assert (line, api_field) == (3, field)
    assert worker == f"training_file line 3: {message}"


def test_a_tool_turn_is_refused_at_upload_with_its_line_and_field(tmp_path: Path) -> None:
    row = {"messages": [USER, {"role": "tool", "content": "42"}, ANSWER]}
    content = b"".join(json.dumps(r).encode() + b"\n" for r in [*GOOD[Task.causal_lm], row])
    assert api_problem(content) == (3, "messages[1].role", "messages[1].role must be one of system, user, assistant")


def test_drop_invalid_drops_exactly_the_rows_the_api_refuses() -> None:
    for task in Task:
        names = [name for name in sorted(CASES) if CASES[name][0] == task]
        rows = [Row(i, CASES[name][2], "training_file") for i, name in enumerate(names, start=1)]
        kept = prepare_data(task, DataOptions(drop_invalid=True), rows, None, 0.0, 0).train
        assert [r.data for r in kept] == [CASES[name][2] for name in names if CASES[name][3] is None], task
