"""Does packing pay? Padded batches, group_by_length and packed rows, side by side in one run.

A small Llama built in code (hidden 256, 2 layers by default: big enough that compute, not Python, dominates) trains
one epoch on the same synthetic SFT data three ways with the job's own code (training_arguments, JobTrainer,
PadCollator, pack_examples): padded batches of 8 examples in random order, group_by_length, and packing into rows of
max_seq_length. The data is a random bigram language (each token has 4 successors: learnable); each example is a
prompt (labels -100) and its continuation, lengths log-uniform in [14, 512] tokens. The runs take their optimizer
steps in turn (round-robin, each step timed), so a machine whose load changes slows them alike. Packed batches hold as many rows
as carry the padded batch's real tokens on average (8 x mean length / max_seq_length, at least 1), so every run
takes about as many optimizer steps on as many tokens each: their eval losses are comparable.

Prints per run: optimizer steps, real tokens per second (non-padding input tokens / train seconds) and its ratio to
padded, the padding fraction of the batches it trained on, and the final eval loss on held-out unpacked examples
with its relative difference to padded. One thread by default: on a busy machine, torch's threads wait on each
other at every operation, a cost per step that hides how many tokens a step holds (measured on a 2-core machine at
load ~15: packed 2.32x with 1 thread, 1.17x with 2).

    .venv/bin/python bench/packing.py [--examples 128] [--hidden 256] [--layers 2] [--max-len 512] [--threads 1]
"""

from __future__ import annotations

import argparse
import math
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from ftjobs.client.models import Hyperparameters
from ftjobs.jobs.data.examples import IGNORE_INDEX, ExampleDataset
from ftjobs.jobs.training.packing import pack_examples
from ftjobs.jobs.training.trainer import JobTrainer, PadCollator, training_arguments

VOCAB = 512
PAD = 0


def synthetic_examples(n: int, max_len: int, seed: int) -> list[dict[str, Any]]:
    """Bigram-language SFT examples: a prompt (masked) and its continuation, lengths log-uniform in [14, max_len]."""
    table = random.Random(1234)  # the language: the same for every split
    successors = {t: [table.randrange(1, VOCAB) for _ in range(4)] for t in range(1, VOCAB)}
    rng = random.Random(seed)
    examples = []
    for _ in range(n):
        length = int(math.exp(rng.uniform(math.log(14), math.log(max_len))))
        ids = [rng.randrange(1, VOCAB)]
        while len(ids) < length:
            ids.append(rng.choice(successors[ids[-1]]))
        prompt = rng.randint(1, length // 2)
        labels = [IGNORE_INDEX] * prompt + ids[prompt:]
        examples.append({"input_ids": ids, "attention_mask": [1] * length, "labels": labels})
    return examples


class CountingCollator(PadCollator):
    """PadCollator that counts real tokens and token slots of the batches it makes."""

    def __init__(self) -> None:
        super().__init__(PAD)
        self.real = self.slots = 0

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = super().__call__(features)
        self.real += sum(len(f["input_ids"]) for f in features)
        self.slots += batch["input_ids"].numel()
        return batch


class Run:
    """One way of batching: its own model (same initial weights), Trainer, dataloader, optimizer and clock."""

    def __init__(self, name: str, train: list[dict[str, Any]], hp: Hyperparameters, config: LlamaConfig, work: Path):
        torch.manual_seed(0)  # the same initial weights for every run
        args = training_arguments(hp, work / name, [], 10_000, "no", {}, {}, causal=True)
        self.collator = CountingCollator()
        self.trainer = JobTrainer(
            model=LlamaForCausalLM(config), args=args, train_dataset=ExampleDataset(train), data_collator=self.collator
        )
        self.batches = iter(self.trainer.get_train_dataloader())
        self.trainer.create_optimizer_and_scheduler(num_training_steps=len(self.trainer.get_train_dataloader()))
        self.trainer.current_gradient_accumulation_steps = 1  # set by Trainer.train's loop, which we step by hand
        self.steps, self.seconds = 0, 0.0

    def step(self) -> bool:
        """One optimizer step as the Trainer takes it (forward, backward, clip, step); False when the epoch is done."""
        started = time.perf_counter()
        batch = next(self.batches, None)
        if batch is None:
            return False
        trainer, model = self.trainer, self.trainer.model
        model.train()
        trainer.training_step(model, batch)
        torch.nn.utils.clip_grad_norm_(model.parameters(), trainer.args.max_grad_norm)
        trainer.optimizer.step()
        trainer.lr_scheduler.step()
        trainer.optimizer.zero_grad()
        self.seconds += time.perf_counter() - started
        self.steps += 1
        return True

    def results(self, val: list[dict[str, Any]]) -> dict[str, float]:
        self.trainer.data_collator = PadCollator(PAD)
        return {
            "steps": self.steps,
            "tokens_per_s": self.collator.real / self.seconds,
            "padding": 1 - self.collator.real / self.collator.slots,
            "eval_loss": self.trainer.evaluate(ExampleDataset(val))["eval_loss"],
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=128)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--max-len", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    a = parser.parse_args()
    torch.set_num_threads(a.threads)
    config = LlamaConfig(
        vocab_size=VOCAB, hidden_size=a.hidden, intermediate_size=2 * a.hidden, num_hidden_layers=a.layers,
        num_attention_heads=a.hidden // 64, num_key_value_heads=a.hidden // 64, max_position_embeddings=a.max_len,
        pad_token_id=PAD, bos_token_id=1, eos_token_id=2, attn_implementation="sdpa",
    )  # fmt: skip
    train = synthetic_examples(a.examples, a.max_len, seed=1)
    val = synthetic_examples(32, a.max_len, seed=2)
    rows = pack_examples(train, a.max_len)
    mean_len = sum(len(e["input_ids"]) for e in train) / len(train)
    rows_per_batch = max(1, round(a.batch_size * mean_len / a.max_len))
    common = {"n_epochs": 1, "learning_rate": 1e-3, "max_seq_length": a.max_len, "warmup_ratio": 0.05}
    print(
        f"{len(train)} examples (mean {mean_len:.0f} tokens, {min(len(e['input_ids']) for e in train)}-"
        f"{max(len(e['input_ids']) for e in train)}), packed into {len(rows)} rows of <= {a.max_len}; "
        f"Llama hidden {a.hidden} x {a.layers} layers, {a.threads} threads"
    )
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        runs = {
            f"padded (batch {a.batch_size})": Run(
                "padded", train, Hyperparameters(batch_size=a.batch_size, **common), config, work
            ),
            f"group_by_length (batch {a.batch_size})": Run(
                "grouped", train, Hyperparameters(batch_size=a.batch_size, group_by_length=True, **common), config, work
            ),
            f"packed (batch {rows_per_batch} rows)": Run(
                "packed", rows, Hyperparameters(batch_size=rows_per_batch, **common), config, work
            ),
        }
        # Steps interleaved round-robin: a machine whose load changes slows every run alike.
        active = list(runs.values())
        while active:
            active = [r for r in active if r.step()]
        results = {name: r.results(val) for name, r in runs.items()}
    base = next(iter(results.values()))
    print(f"{'run':<28} {'steps':>5} {'tokens/s':>9} {'x padded':>8} {'padding':>8} {'eval loss':>9} {'vs padded':>9}")
    for name, r in results.items():
        print(
            f"{name:<28} {r['steps']:>5} {r['tokens_per_s']:>9.0f} {r['tokens_per_s'] / base['tokens_per_s']:>7.2f}x "
            f"{100 * r['padding']:>7.1f}% {r['eval_loss']:>9.4f} "
            f"{100 * (r['eval_loss'] / base['eval_loss'] - 1):>+8.2f}%"
        )


if __name__ == "__main__":
    main()
