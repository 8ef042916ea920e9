"""Packing (hyperparameters.packing): causal_lm training examples in rows of max_seq_length, each example kept apart.

TRL's `pack_dataset` (best-fit decreasing) decides which examples share a row; transformers'
`DataCollatorWithFlattening` lays each row out: `position_ids` restart at 0 for every example and the first label of
each example is -100, so no example learns to predict its neighbour's first token. A row carries no attention_mask:
with position_ids and no mask, transformers 5's `create_causal_mask` (masking_utils.find_packed_sequence_indices)
builds a block-diagonal causal mask for sdpa and eager attention alike (no flash-attention needed), so each example
attends only to its own tokens. It does so only without a cache: the Trainer trains with use_cache=False (its
TrainingArguments default); tests/jobs/test_packing.py checks the packed loss equals the unpacked one. The
padding PadCollator adds to a batch's shorter rows gets position 0 throughout: each padding token is a block of its
own, with label -100.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

from ftjobs.jobs.data.examples import ExampleDataset
from ftjobs.jobs.report import Reporter
from ftjobs.jobs.training.inputs import Inputs

PACKED_FIELDS = ("input_ids", "labels")  # what a packed row keeps of an example (position_ids are added)


@dataclass
class PackingStats:
    """What packing did, for the resolved record (`packing_stats`) and its event."""

    rows_before: int  # training examples
    rows_after: int  # packed rows of at most max_seq_length tokens
    tokens: int  # real (non-padding) tokens per epoch
    padding_fraction: float  # of the token slots in one epoch's packed batches
    padding_fraction_unpacked: float  # ... had the examples been batched as they are

    def as_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def pack_examples(examples: list[dict[str, Any]], max_seq_length: int) -> list[dict[str, list[int]]]:
    """Rows of input_ids, labels and position_ids, each up to max_seq_length tokens of whole examples."""
    import datasets
    from transformers import DataCollatorWithFlattening
    from trl.data_utils import pack_dataset

    datasets.disable_progress_bars()  # the job's events say what happened; the worker log stays quiet
    table = datasets.Dataset.from_dict({k: [e[k] for e in examples] for k in PACKED_FIELDS})
    # batch_size None: one best-fit pass over all examples, not per 1,000; in memory: no cache files
    packed = pack_dataset(table, max_seq_length, "bfd", map_kwargs={"batch_size": None, "keep_in_memory": True})
    flatten = DataCollatorWithFlattening(return_tensors="np")  # separator_id -100: each example's first label
    rows = []
    for row in packed:
        starts, features = 0, []
        for n in row["seq_lengths"]:
            features.append({k: row[k][starts : starts + n] for k in PACKED_FIELDS})
            starts += n
        flat = flatten(features)
        rows.append({k: flat[k][0].tolist() for k in (*PACKED_FIELDS, "position_ids")})
    return rows


def padding_fraction(lengths: list[int], batch_size: int, seed: int) -> float:
    """Padding share of one epoch's token slots, batches drawn in a seeded random order, each padded to its longest."""
    if not lengths:
        return 0.0
    order = torch.randperm(len(lengths), generator=torch.Generator().manual_seed(seed)).tolist()
    slots = 0
    for i in range(0, len(order), batch_size):
        batch = [lengths[j] for j in order[i : i + batch_size]]
        slots += len(batch) * max(batch)
    return 1.0 - sum(lengths) / slots


def training_set(inputs: Inputs, reporter: Reporter) -> tuple[ExampleDataset, PackingStats | None]:
    """What the Trainer trains on: the examples, or (packing) their packed rows and what packing did."""
    hp, train = inputs.hp, inputs.data.train
    if not hp.packing:
        return train, None
    rows = pack_examples(train.examples, hp.max_seq_length)
    stats = PackingStats(
        rows_before=len(train),
        rows_after=len(rows),
        tokens=train.num_tokens(),
        padding_fraction=round(padding_fraction([len(r["input_ids"]) for r in rows], hp.batch_size, hp.seed), 4),
        padding_fraction_unpacked=round(
            padding_fraction([len(e["input_ids"]) for e in train.examples], hp.batch_size, hp.seed), 4
        ),
    )
    reporter.event(
        f"packing: {stats.rows_before} examples into {stats.rows_after} rows of up to {hp.max_seq_length} tokens; "
        f"padding {100 * stats.padding_fraction:.1f}% of the batches' tokens "
        f"(unpacked: {100 * stats.padding_fraction_unpacked:.1f}%)",
        data={"packing": stats.as_json()},
    )
    return ExampleDataset(rows), stats


def with_training_set(inputs: Inputs, train: ExampleDataset) -> Inputs:
    """`inputs` whose training data is `train` (the schedule counts packed rows as the Trainer will)."""
    return dataclasses.replace(inputs, data=dataclasses.replace(inputs.data, train=train))
