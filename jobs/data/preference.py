"""Preference rows (task dpo) as the pairs TRL's DPOTrainer reads: {"prompt", "chosen", "rejected"}.

Both upload shapes (`ftjobs.core.rows`) become one: OpenAI's `input.messages` is the prompt, its
`preferred_output`/`non_preferred_output` the chosen/rejected answers. A file whose rows are all plain strings stays
plain text (TRL tokenizes prompt + answer and adds EOS); as soon as one row holds messages, every row becomes a
conversation (a plain prompt is one user turn, a plain answer one assistant turn) rendered by the chat template,
since one dataset holds one column type. `tools` are not passed on: the worker's chat templates do not render them.
Each example also carries `input_ids` (the prompt and the longer answer, tokenized as TRL will) so the token report
and the max_seq_length checks of the other tasks apply unchanged.
"""

from __future__ import annotations

from typing import Any

from ftjobs.client.models import Task
from ftjobs.core.rows import preference_parts
from ftjobs.jobs.data.read import Row, check_row

Pair = dict[str, Any]  # {"prompt": str | messages, "chosen": str | messages, "rejected": str | messages}


def _turns(value: Any, role: str) -> list[dict[str, str]]:
    if isinstance(value, str):
        return [{"role": role, "content": value}] if value else []
    return [{"role": m["role"], "content": m["content"]} for m in value]


def preference_pairs(rows: list[Row]) -> list[Pair]:
    """Each row (checked: a DataError names its line) as a pair; all plain or all conversational."""
    parts = []
    for row in rows:
        check_row(row, Task.dpo)
        parts.append(preference_parts(row.data))
    if all(isinstance(v, str) for p in parts for v in p):
        return [{"prompt": p, "chosen": c, "rejected": r} for p, c, r in parts]
    return [
        {"prompt": _turns(p, "user"), "chosen": _turns(c, "assistant"), "rejected": _turns(r, "assistant")}
        for p, c, r in parts
    ]


def _ids(tokenizer: Any, pair: Pair, answer: str) -> list[int]:
    if isinstance(pair["prompt"], list):
        text = tokenizer.apply_chat_template(pair["prompt"] + pair[answer], tokenize=False)
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    return list(tokenizer(pair["prompt"] + pair[answer])["input_ids"]) + eos


def preference_examples(rows: list[Row], tokenizer: Any, max_seq_length: int) -> list[dict[str, Any]]:
    """Pairs plus `input_ids`: the prompt with its longer answer, truncated at max_seq_length (token statistics)."""
    examples = []
    for pair in preference_pairs(rows):
        longest = max((_ids(tokenizer, pair, a) for a in ("chosen", "rejected")), key=len)
        examples.append({**pair, "input_ids": longest[:max_seq_length]})
    return examples
