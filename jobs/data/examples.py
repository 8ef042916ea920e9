"""From rows to tokenized training examples; every problem is a DataError naming the file and line."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import torch

from ftjobs.client.models import Task
from ftjobs.jobs.data.preference import preference_examples
from ftjobs.jobs.data.read import Row, check_row, label_of, source_target
from ftjobs.jobs.data.split import MIN_TRAIN_ROWS, split_rows
from ftjobs.jobs.errors import DataError

IGNORE_INDEX = -100  # label value the loss skips (prompt tokens, padding)

# For tokenizers that ship without a chat template (a tokenizer built in code, a base model).
DEFAULT_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + eos_token }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)


class ExampleDataset(torch.utils.data.Dataset):
    """Tokenized examples (dicts of input_ids, attention_mask, labels ...) held in memory."""

    def __init__(self, examples: list[dict[str, Any]]) -> None:
        self.examples = examples

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.examples[i]

    def num_tokens(self) -> int:
        return sum(len(e["input_ids"]) for e in self.examples)


@dataclass
class Datasets:
    train: ExampleDataset
    validation: ExampleDataset | None
    labels: list[str] | None = None  # classification: sorted label names, index = class id
    notes: list[str] = field(default_factory=list)  # things the user should hear about (events)
    validation_rows: list[Row] = field(default_factory=list)  # the held-out rows, for generation and samples


# ---------------------------------------------------------------------------- classification


def label_list(rows: list[Row]) -> list[str]:
    counts = Counter(label_of(r) for r in rows)
    if len(counts) < 2:
        raise DataError(
            f"training_file has {len(counts)} distinct label(s); classification needs at least 2",
            param="training_file",
        )
    return sorted(counts)


def classification_examples(
    rows: list[Row], tokenizer: Any, max_seq_length: int, label2id: dict[str, int]
) -> list[dict[str, Any]]:
    examples = []
    for row in rows:
        label = label_of(row)
        if label not in label2id:
            raise DataError(
                f"{row.where()}: label {label!r} does not occur in the training data", param=row.where()
            )
        enc = tokenizer(row.data["text"], truncation=True, max_length=max_seq_length)
        examples.append({**{k: list(v) for k, v in enc.items()}, "labels": label2id[label]})
    return examples


# ---------------------------------------------------------------------------- causal LM


def ensure_chat_template(tokenizer: Any) -> bool:
    """Give a tokenizer without a chat template the simple default; True if one was set."""
    if getattr(tokenizer, "chat_template", None):
        return False
    tokenizer.chat_template = DEFAULT_CHAT_TEMPLATE
    return True


def _messages_example(row: Row, tokenizer: Any) -> tuple[list[int], list[int]]:
    msgs = [{"role": m["role"], "content": m["content"]} for m in row.data["messages"]]

    def ids(conversation: list[dict[str, str]], generation_prompt: bool = False) -> list[int]:
        text = tokenizer.apply_chat_template(
            conversation, tokenize=False, add_generation_prompt=generation_prompt
        )
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])

    try:
        input_ids = ids(msgs)
        labels = [IGNORE_INDEX] * len(input_ids)
        # An assistant turn's tokens = what rendering it adds after the prompt that asks for it.
        for i, m in enumerate(msgs):
            if m["role"] == "assistant":
                start, end = len(ids(msgs[:i], generation_prompt=True)), len(ids(msgs[: i + 1]))
                labels[start:end] = input_ids[start:end]
    except DataError:
        raise
    except Exception as e:  # the template rejected this conversation (order of roles, ...)
        raise DataError(f"{row.where()}: chat template failed: {e}", param=row.where()) from None
    return input_ids, labels


def _causal_example(row: Row, tokenizer: Any) -> tuple[list[int], list[int]]:
    check_row(row, Task.causal_lm)
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    d = row.data
    if "messages" in d:
        return _messages_example(row, tokenizer)
    if "completion" in d:
        prompt_ids = list(tokenizer(d["prompt"])["input_ids"])
        completion_ids = list(tokenizer(d["completion"], add_special_tokens=False)["input_ids"]) + eos
        return prompt_ids + completion_ids, [IGNORE_INDEX] * len(prompt_ids) + completion_ids
    input_ids = list(tokenizer(d["text"])["input_ids"]) + eos
    return input_ids, list(input_ids)


def causal_examples(
    rows: list[Row], tokenizer: Any, max_seq_length: int, train_on_inputs: bool = False
) -> tuple[list[dict[str, Any]], int]:
    """Tokenized rows truncated to max_seq_length; also how many were dropped for having no label left."""
    examples, dropped = [], 0
    for row in rows:
        input_ids, labels = _causal_example(row, tokenizer)
        if train_on_inputs:  # the loss on every token: prompts and user turns too
            labels = list(input_ids)
        input_ids, labels = input_ids[:max_seq_length], labels[:max_seq_length]
        if all(t == IGNORE_INDEX for t in labels):
            dropped += 1  # the prompt filled the whole window: nothing left to learn from this row
            continue
        examples.append({"input_ids": input_ids, "attention_mask": [1] * len(input_ids), "labels": labels})
    return examples, dropped


# ---------------------------------------------------------------------------- seq2seq


def seq2seq_examples(rows: list[Row], tokenizer: Any, max_seq_length: int) -> list[dict[str, Any]]:
    """Encoder input = the source, labels = the target + EOS (both truncated to max_seq_length)."""
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    examples = []
    for row in rows:
        source, target = source_target(row)
        input_ids = list(tokenizer(source, truncation=True, max_length=max_seq_length)["input_ids"])
        labels = (list(tokenizer(target, add_special_tokens=False)["input_ids"]) + eos)[:max_seq_length]
        examples.append({"input_ids": input_ids, "attention_mask": [1] * len(input_ids), "labels": labels})
    return examples


# ---------------------------------------------------------------------------- all tasks


def build_datasets(
    task: Task,
    tokenizer: Any,
    train_rows: list[Row],
    validation_rows: list[Row] | None,
    max_seq_length: int,
    validation_split: float,
    seed: int,
    train_on_inputs: bool = False,
    labels: list[str] | None = None,
) -> Datasets:
    """Validate, split (when no validation file) and tokenize; `labels` fixes the label order (classification)."""
    if len(train_rows) < MIN_TRAIN_ROWS:
        raise DataError(
            f"training_file has {len(train_rows)} row(s); at least {MIN_TRAIN_ROWS} are needed",
            param="training_file",
        )
    notes: list[str] = []
    if task == Task.classification:
        labels = labels or label_list(train_rows)
    else:
        labels = None
    if validation_rows is None:
        stratify = [label_of(r) for r in train_rows] if labels else None
        train_rows, validation_rows, note = split_rows(train_rows, validation_split, seed, stratify)
        notes.append(note)

    if labels is not None:
        label2id = {name: i for i, name in enumerate(labels)}
        train = classification_examples(train_rows, tokenizer, max_seq_length, label2id)
        val = classification_examples(validation_rows, tokenizer, max_seq_length, label2id)
    elif task == Task.seq2seq:
        train = seq2seq_examples(train_rows, tokenizer, max_seq_length)
        val = seq2seq_examples(validation_rows, tokenizer, max_seq_length)
    elif task == Task.dpo:  # pairs for TRL's DPOTrainer, which tokenizes them itself (jobs/data/preference.py)
        if ensure_chat_template(tokenizer):
            notes.append("the tokenizer has no chat template; using the default `<|role|>` template")
        train = preference_examples(train_rows, tokenizer, max_seq_length)
        val = preference_examples(validation_rows, tokenizer, max_seq_length)
    else:
        if ensure_chat_template(tokenizer):
            notes.append("the tokenizer has no chat template; using the default `<|role|>` template")
        train, dropped = causal_examples(train_rows, tokenizer, max_seq_length, train_on_inputs)
        val, dropped_val = causal_examples(validation_rows, tokenizer, max_seq_length, train_on_inputs)
        if dropped or dropped_val:
            notes.append(
                f"skipped {dropped + dropped_val} row(s) whose prompt fills max_seq_length={max_seq_length}"
            )
    if len(train) < MIN_TRAIN_ROWS:
        raise DataError(
            f"training_file has {len(train)} usable row(s) after tokenization; "
            f"at least {MIN_TRAIN_ROWS} are needed",
            param="training_file",
        )
    return Datasets(
        ExampleDataset(train), ExampleDataset(val) if val else None, labels, notes, validation_rows=validation_rows
    )


def steps_per_epoch(n_rows: int, batch_size: int, grad_accum: int) -> int:
    """Optimizer steps per epoch, as the Trainer counts them."""
    return max(1, math.ceil(math.ceil(n_rows / batch_size) / grad_accum))
