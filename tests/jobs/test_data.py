"""Rows -> training examples: masking, truncation, splitting and the errors that name the line."""

from __future__ import annotations

from pathlib import Path

import pytest

from ftjobs.client.models import JobCreate, LoraMethod, Task, resolve_hyperparameters
from ftjobs.jobs.data.examples import IGNORE_INDEX, build_datasets
from ftjobs.jobs.data.inputs import hyperparameters
from ftjobs.jobs.data.read import Row, read_jsonl
from ftjobs.jobs.data.split import split_rows
from ftjobs.jobs.errors import DataError, JobFailed
from tests.tiny_models import build_tiny_tokenizer


@pytest.fixture(scope="module")
def tokenizer():  # type: ignore[no-untyped-def]
    return build_tiny_tokenizer()


def rows(*data: dict) -> list[Row]:
    return [Row(i, d, "training_file") for i, d in enumerate(data, start=1)]


def learned(tokenizer, example: dict) -> str:  # type: ignore[no-untyped-def]
    return tokenizer.decode([t for t in example["labels"] if t != IGNORE_INDEX])


def build(
    tokenizer, train: list[Row], max_len: int = 64, validation: list[Row] | None = None, task=Task.causal_lm
):  # type: ignore[no-untyped-def]
    return build_datasets(task, tokenizer, train, validation or [], max_len, 0.0, 0)


def test_messages_learn_only_the_assistant_turns(tokenizer) -> None:  # type: ignore[no-untyped-def]
    convo = {
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "what is the colour of snow ?"},
            {"role": "assistant", "content": "snow is white"},
            {"role": "user", "content": "and grass ?"},
            {"role": "assistant", "content": "grass is green"},
        ]
    }
    data = build(tokenizer, rows(convo, convo), max_len=256)
    assert learned(tokenizer, data.train[0]) == "snow is white</s>grass is green</s>"


def test_prompt_is_masked_and_text_is_learned_whole(tokenizer) -> None:  # type: ignore[no-untyped-def]
    data = build(
        tokenizer, rows({"prompt": "say hello .", "completion": " hello there"}, {"text": "one two three"})
    )
    pc, text = data.train[0], data.train[1]
    assert learned(tokenizer, pc) == " hello there</s>"
    assert pc["labels"][0] == IGNORE_INDEX and pc["input_ids"][-1] == tokenizer.eos_token_id
    assert text["labels"] == text["input_ids"]


def test_truncation_and_rows_with_nothing_left_to_learn(tokenizer) -> None:  # type: ignore[no-untyped-def]
    long_prompt = {"prompt": "one two three four five six seven eight nine ten " * 3, "completion": " ok"}
    data = build(
        tokenizer, rows({"text": "a b c d e f g h i j k l m n o p"}, {"text": "one"}, long_prompt), max_len=8
    )
    assert len(data.train) == 2 and all(len(e["input_ids"]) <= 8 for e in data.train)
    assert any("skipped 1 row" in n for n in data.notes)


def test_errors_name_the_file_and_line(tokenizer, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n\n{"text": oops}\n')
    with pytest.raises(DataError) as e:
        read_jsonl(bad, "training_file")
    assert e.value.param == "training_file line 3" and "not valid JSON" in e.value.message

    with pytest.raises(DataError, match="training_file line 2: messages\\[0\\]"):
        build(tokenizer, rows({"text": "ok"}, {"messages": [{"role": "robot", "content": "hi"}]}))
    with pytest.raises(DataError, match="at least 2"):
        build(tokenizer, rows({"text": "only one"}))
    with pytest.raises(DataError, match="1 distinct label"):
        build(
            tokenizer,
            rows({"text": "a", "label": "x"}, {"text": "b", "label": "x"}),
            task=Task.classification,
        )
    with pytest.raises(DataError, match="validation_file line 1: label 'z'"):
        build(
            tokenizer,
            rows({"text": "a", "label": "x"}, {"text": "b", "label": "y"}),
            task=Task.classification,
            validation=[Row(1, {"text": "c", "label": "z"}, "validation_file")],
        )


def test_classification_split_is_seeded_and_stratified() -> None:
    data = rows(*({"text": f"t{i}", "label": "a" if i % 4 else "b"} for i in range(40)))
    labels = [r.data["label"] for r in data]
    train, val, note = split_rows(data, 0.2, seed=7, stratify=labels)
    assert len(val) == 8 and sorted(r.data["label"] for r in val) == ["a"] * 6 + ["b"] * 2
    assert "stratified" in note
    assert [r.line for r in split_rows(data, 0.2, seed=7, stratify=labels)[1]] == [r.line for r in val]
    # A class with a single row cannot be stratified: the split still happens, unstratified.
    lonely = [*data[:10], Row(99, {"text": "x", "label": "c"}, "training_file")]
    _, val, note = split_rows(lonely, 0.2, seed=7, stratify=[r.data["label"] for r in lonely])
    assert len(val) == 2 and "unstratified" in note


def test_a_tokenizer_without_chat_template_gets_the_default(tokenizer) -> None:  # type: ignore[no-untyped-def]
    tokenizer = build_tiny_tokenizer()
    tokenizer.chat_template = None
    convo = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    data = build(tokenizer, rows(convo, convo))
    assert tokenizer.chat_template and learned(tokenizer, data.train[0]) == "hello</s>"
    assert any("default" in n for n in data.notes)


def test_the_worker_reads_the_hyperparameters_the_api_resolved() -> None:
    request = JobCreate(model="m", task=Task.causal_lm, training_file="file-" + "0" * 20, method=LoraMethod())
    assert hyperparameters(request, {**resolve_hyperparameters(request), "learning_rate": 0.5}).learning_rate == 0.5
    with pytest.raises(JobFailed, match="no resolved learning_rate"):  # never re-derived on the worker
        hyperparameters(request, {})
