"""Greedy decoding of a batch of decoder-only prompts: their common prefix run once, each row leaving when done.

`model.generate` on a left-padded batch prefills every prompt whole and steps every row to the longest budget.
On a CPU the prefill is as dear batched as not, and chat prompts are mostly template: of SmolLM2's ~47-token
translation prompts, 29 (its default system turn, the user turn's opening) are the same in every row. Per batch:

- the prompts' common prefix is run once, at batch size 1, and its KV cache repeated for the rows; each row then
  prefills only its own tail. Tails are padded on their left, between the prefix and the tail: the pads are
  masked and skipped in the position count, so each row sees what it would see alone;
- only the last position's logits are computed (`logits_to_keep=1`);
- a row is done at EOS or at its own token budget; done rows leave the batch (their cache rows dropped) once
  they are a quarter of it, and the batch ends with its last row;
- repetition_penalty / no_repeat_ngram_size see each row's own prompt + output (never pads), as generating that
  row alone does.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch
from transformers.cache_utils import DynamicLayer

NEEDS = {"cache", "attention_mask", "position_ids", "logits_to_keep"}  # what the forward must accept
GENERATE_ONLY = (
    "suppress_tokens", "begin_suppress_tokens", "bad_words_ids", "sequence_bias", "forced_bos_token_id",
    "forced_eos_token_id", "min_length", "min_new_tokens",
)  # fmt: skip


def _base(model: Any) -> Any:
    return model.get_base_model() if hasattr(model, "get_base_model") else model  # a PEFT wrapper's model


def supported(model: Any) -> bool:
    """Whether `model` (or the model under a PEFT wrapper) is a decoder whose forward takes a cache and positions."""
    base = _base(model)
    if getattr(base.config, "is_encoder_decoder", False):
        return False
    config = getattr(model, "generation_config", None)  # logits rules of the model's own: model.generate applies them
    if config is not None and any(getattr(config, name, None) for name in GENERATE_ONLY):
        return False
    return NEEDS <= set(inspect.signature(base.forward).parameters)


def common_prefix(prompts: Sequence[Sequence[int]]) -> int:
    """Tokens every prompt starts with, leaving each at least one of its own (the one whose logits come next)."""
    limit = min(len(p) for p in prompts) - 1
    first = prompts[0]
    for i in range(max(limit, 0)):
        if any(p[i] != first[i] for p in prompts):
            return i
    return max(limit, 0)


def _processors(repetition_penalty: float, no_repeat_ngram_size: int) -> list[Any]:
    from transformers.generation.logits_process import (
        NoRepeatNGramLogitsProcessor,
        RepetitionPenaltyLogitsProcessor,
    )

    out: list[Any] = []
    if no_repeat_ngram_size > 0:
        out.append(NoRepeatNGramLogitsProcessor(no_repeat_ngram_size))
    if repetition_penalty != 1.0:
        out.append(RepetitionPenaltyLogitsProcessor(repetition_penalty))
    return out


class _Preallocated(DynamicLayer):
    """A DynamicLayer writing into buffers sized for the whole generation: no torch.cat of the cache every step."""

    def __init__(self, capacity: int) -> None:
        super().__init__()
        self.capacity, self.length = capacity, 0

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        if not self.is_initialized:
            self.device, self.is_initialized = key_states.device, True
            self.key_buffer = key_states.new_empty((*key_states.shape[:2], self.capacity, key_states.shape[3]))
            self.value_buffer = value_states.new_empty((*value_states.shape[:2], self.capacity, value_states.shape[3]))
        n = key_states.shape[-2]
        self.key_buffer[:, :, self.length : self.length + n] = key_states
        self.value_buffer[:, :, self.length : self.length + n] = value_states
        self.length += n
        self._views()
        return self.keys, self.values

    def _views(self) -> None:
        self.keys = self.key_buffer[:, :, : self.length]
        self.values = self.value_buffer[:, :, : self.length]

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self.is_initialized:
            self.key_buffer = self.key_buffer.repeat_interleave(repeats, dim=0)
            self.value_buffer = self.value_buffer.repeat_interleave(repeats, dim=0)
            self._views()

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.is_initialized:
            self.key_buffer, self.value_buffer = self.key_buffer[indices], self.value_buffer[indices]
            self._views()


def _cache(model: Any, capacity: int) -> Any:
    """A DynamicCache for the model, its plain full-attention layers preallocated (sliding/linear ones kept)."""
    from transformers import DynamicCache

    cache = DynamicCache(config=_base(model).config)
    cache.layers = [_Preallocated(capacity) if type(layer) is DynamicLayer else layer for layer in cache.layers]
    return cache


def greedy(
    model: Any,
    prompts: Sequence[Sequence[int]],
    budgets: Sequence[int],
    *,
    eos: set[int],
    pad: int,
    repetition_penalty: float = 1.0,
    no_repeat_ngram_size: int = 0,
) -> list[list[int]]:
    """The new token ids of each prompt (EOS left out), at most its budget; `supported(model)` must hold."""
    device = next(model.parameters()).device
    n = len(prompts)
    processors = _processors(repetition_penalty, no_repeat_ngram_size)
    p = common_prefix(prompts)
    width = max(len(prompt) - p for prompt in prompts)
    cache = _cache(model, p + width + max(budgets))
    if p:
        prefix = torch.tensor([list(prompts[0][:p])], device=device)
        model(input_ids=prefix, cache=cache, use_cache=True, logits_to_keep=1)
        if n > 1:
            cache.batch_repeat_interleave(n)
    ids = torch.full((n, width), pad, dtype=torch.long)
    mask = torch.zeros((n, p + width), dtype=torch.long)
    mask[:, :p] = 1
    for i, prompt in enumerate(prompts):
        tail = list(prompt[p:])
        ids[i, width - len(tail) :] = torch.tensor(tail, dtype=torch.long)
        mask[i, p + width - len(tail) :] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, p:]
    following = mask.sum(-1, keepdim=True)  # each row's next position
    mask, following = mask.to(device), following.to(device)
    out = model(
        input_ids=ids.to(device), attention_mask=mask, position_ids=positions.to(device), cache=cache,
        use_cache=True, logits_to_keep=1,
    )  # fmt: skip
    rows = list(range(n))  # the batch's rows, by their index in `prompts`
    live = list(range(n))  # positions in `rows` still generating; the others ride along until compacted
    outputs: list[list[int]] = [[] for _ in range(n)]
    seen = [list(prompt) for prompt in prompts] if processors else []
    while True:
        logits = out.logits[:, -1, :]
        if processors:
            logits = logits.float()
            for k in live:
                for processor in processors:
                    logits[k : k + 1] = processor(torch.tensor([seen[rows[k]]], device=device), logits[k : k + 1])
        tokens = logits.argmax(-1)
        chosen = tokens.tolist()
        still: list[int] = []
        for k in live:
            i, token = rows[k], chosen[k]
            if token in eos:
                continue
            outputs[i].append(token)
            if processors:
                seen[i].append(token)
            if len(outputs[i]) < budgets[i]:
                still.append(k)
        if not still:
            return outputs
        # Finished rows still cost a row of compute each step; dropping them copies the cache: drop in bulk.
        if (len(rows) - len(still)) * 4 >= len(rows):
            index = torch.tensor(still, device=device)
            cache.batch_select_indices(index)
            mask, following, tokens = mask[index], following[index], tokens[index]
            rows, still = [rows[k] for k in still], list(range(len(still)))
        live = still
        mask = torch.cat([mask, mask.new_ones((len(rows), 1))], dim=1)
        out = model(
            input_ids=tokens[:, None], attention_mask=mask, position_ids=following, cache=cache, use_cache=True,
            logits_to_keep=1,
        )  # fmt: skip
        following = following + 1
