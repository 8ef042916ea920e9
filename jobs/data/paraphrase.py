"""Model-based augmentation of the training split: paraphrase and back-translate with a local model.

The generator is any causal or seq2seq model under a model root, loaded on the CPU for this step only and
freed after. Causal models get `augment_prompt` with the text filled in (the first non-empty line of the
continuation is kept); seq2seq models (`config.is_encoder_decoder`) get the text itself as the source.
Generation is seeded (greedy by default, sampled with `augment_temperature` > 0) and `max_new_tokens` is
bounded by the input's length. Outputs that are empty or equal to their input are dropped, and at most
`augment_max_rows` training rows (a seeded sample) are rewritten, so at most that many rows are added.
"""

from __future__ import annotations

import gc
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ftjobs.core.rows import INPUT_FIELDS
from ftjobs.jobs.data.read import Row

BATCH_SIZE = 8
MAX_INPUT_TOKENS = 256
MAX_NEW_TOKENS = 256


def input_texts(row: Row) -> list[tuple[str, int | None]]:
    """The row's rewritable texts: (field, None) for text/prompt/source, ("messages", i) for user turns."""
    d = row.data
    out: list[tuple[str, int | None]] = [(n, None) for n in INPUT_FIELDS if _nonblank(d.get(n))]
    if isinstance(d.get("messages"), list):
        out += [
            ("messages", i)
            for i, m in enumerate(d["messages"])
            if isinstance(m, dict) and m.get("role") == "user" and _nonblank(m.get("content"))
        ]
    return out


def _nonblank(v: Any) -> bool:
    return isinstance(v, str) and bool(v.strip())


def _get(row: Row, where: tuple[str, int | None]) -> str:
    name, i = where
    return row.data[name] if i is None else row.data[name][i]["content"]


def _with(row: Row, where: tuple[str, int | None], text: str) -> Row:
    name, i = where
    d = dict(row.data)
    if i is None:
        d[name] = text
    else:
        d[name] = [{**m, "content": text} if j == i else m for j, m in enumerate(d[name])]
    return Row(row.line, d, row.file, row.unit)


class Generator:
    """A causal or seq2seq model on the CPU that rewrites texts; use as a context manager to free it."""

    def __init__(self, path: Path, prompt: str, temperature: float, seed: int) -> None:
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

        self.prompt, self.temperature, self.seed = prompt, temperature, seed
        config = AutoConfig.from_pretrained(str(path))
        self.seq2seq = bool(getattr(config, "is_encoder_decoder", False))
        self.tokenizer = AutoTokenizer.from_pretrained(str(path))
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.tokenizer.padding_side = "right" if self.seq2seq else "left"
        loader = AutoModelForSeq2SeqLM if self.seq2seq else AutoModelForCausalLM
        self.model = loader.from_pretrained(str(path), dtype=torch.float32).to("cpu").eval()

    def __enter__(self) -> Generator:
        return self

    def __exit__(self, *exc: object) -> None:
        del self.model, self.tokenizer
        gc.collect()

    def __call__(self, texts: Sequence[str]) -> list[str]:
        import torch

        torch.manual_seed(self.seed)
        out: list[str] = []
        for start in range(0, len(texts), BATCH_SIZE):
            batch = list(texts[start : start + BATCH_SIZE])
            sources = batch if self.seq2seq else [self.prompt.replace("{text}", t) for t in batch]
            enc = self.tokenizer(
                sources, return_tensors="pt", padding=True, truncation=True, max_length=MAX_INPUT_TOKENS
            )
            text_tokens = max(len(self.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in batch)
            sample = self.temperature > 0
            with torch.no_grad():
                generated = self.model.generate(
                    **enc,
                    max_new_tokens=min(MAX_NEW_TOKENS, 2 * text_tokens + 8),
                    do_sample=sample,
                    **({"temperature": self.temperature, "top_k": 0} if sample else {}),
                    pad_token_id=self.tokenizer.pad_token_id,
                )
            if not self.seq2seq:
                generated = generated[:, enc["input_ids"].shape[1] :]
            for ids in generated:
                decoded = self.tokenizer.decode(ids, skip_special_tokens=True)
                if not self.seq2seq:  # a causal model runs on: its first line is the answer
                    decoded = next((line for line in decoded.splitlines() if line.strip()), "")
                out.append(decoded.strip())
        return out


def rewrite_rows(
    rows: list[Row], generators: Sequence[Callable[[Sequence[str]], list[str]]], max_rows: int, seed: int
) -> tuple[list[Row], dict[str, Any]]:
    """New rows: a seeded sample of at most `max_rows` rows, their texts passed through each generator in turn.

    A text whose final output is empty or equal to the input stays as it was; a row none of whose texts
    changed is dropped. Returns (new rows, counts for the report).
    """
    candidates = [i for i, r in enumerate(rows) if input_texts(r)]
    chosen = sorted(random.Random(seed).sample(candidates, min(max_rows, len(candidates))))
    places = [(i, where) for i in chosen for where in input_texts(rows[i])]
    originals = [_get(rows[i], where) for i, where in places]
    texts = originals
    for generate in generators:
        texts = generate(texts)
    new: dict[int, Row] = {}
    empty = identical = 0
    for (i, where), before, after in zip(places, originals, texts, strict=True):
        if not after:
            empty += 1
        elif after == before.strip():
            identical += 1
        else:
            new[i] = _with(new.get(i, rows[i]), where, after)
    out = [new[i] for i in chosen if i in new]
    return out, {"rows_tried": len(chosen), "texts": len(places), "empty": empty, "identical": identical}
