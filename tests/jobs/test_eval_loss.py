"""eval_loss per target token (jobs/training/eval_loss.py) against the model's own loss, row by row.

A real tiny causal LM and T5 (LoRA, prompt tuning with its virtual tokens, a seq2seq model), a real accelerate
Accelerator. The per-token figure of a batch equals the model's loss on that batch, and equals the token-weighted
mean of each row's own loss, which no batching changes (the 2-process layout is tests/jobs/test_distributed.py's).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from accelerate import Accelerator

from ftjobs.client.models import FullMethod, LoraMethod, PromptTuningMethod, Task
from ftjobs.jobs.training.eval_loss import TokenLoss
from ftjobs.jobs.training.methods import apply_method
from tests.tiny_models import build_tiny_t5


def per_token(model: torch.nn.Module, outputs: object, labels: torch.Tensor) -> float:
    loss = TokenLoss()
    loss.start()
    loss.add(Accelerator(cpu=True), model, outputs, labels)
    metrics = {"eval_loss": -1.0}
    loss.finish(metrics, "eval")
    return metrics["eval_loss"]


@pytest.mark.parametrize("method", [LoraMethod(r=4), PromptTuningMethod(num_virtual_tokens=5)], ids=["lora", "prompt"])
def test_a_decoders_loss_per_token_is_its_own_and_its_rows(tiny_causal_lm: Path, method: object) -> None:
    from transformers import AutoModelForCausalLM

    model = apply_method(AutoModelForCausalLM.from_pretrained(tiny_causal_lm), method, Task.causal_lm).eval()
    torch.manual_seed(0)
    ids = torch.randint(5, 400, (3, 12))
    labels = ids.clone()
    labels[:, :4] = -100  # the prompt
    labels[2, 9:] = -100  # a shorter row: padding
    with torch.no_grad():
        batch = model(input_ids=ids, labels=labels)
        rows = [model(input_ids=ids[r : r + 1], labels=labels[r : r + 1]).loss for r in range(3)]
    tokens = [int((labels[r, 1:] != -100).sum()) for r in range(3)]
    weighted = sum(float(loss) * n for loss, n in zip(rows, tokens, strict=True)) / sum(tokens)
    got = per_token(model, batch, labels)
    assert got == pytest.approx(float(batch.loss), rel=1e-5) and got == pytest.approx(weighted, rel=1e-5)
    assert abs(sum(float(x) for x in rows) / 3 - weighted) > 1e-4  # a mean of row means would differ here


def test_a_seq2seq_models_labels_are_not_shifted(model_root: Path) -> None:
    from transformers import AutoModelForSeq2SeqLM

    folder = build_tiny_t5(model_root / "tiny-t5-eval-loss")
    model = apply_method(AutoModelForSeq2SeqLM.from_pretrained(folder), FullMethod(), Task.seq2seq).eval()
    torch.manual_seed(0)
    ids, labels = torch.randint(5, 300, (2, 10)), torch.randint(5, 300, (2, 6))
    labels[1, 4:] = -100
    with torch.no_grad():
        batch = model(input_ids=ids, labels=labels)
    assert per_token(model, batch, labels) == pytest.approx(float(batch.loss), rel=1e-5)


def test_a_classification_loss_is_left_to_the_trainer() -> None:
    class Outputs:
        logits = torch.zeros(4, 2)

    metrics = {"eval_loss": 0.25}
    loss = TokenLoss()
    loss.start()
    loss.add(Accelerator(cpu=True), torch.nn.Linear(1, 1), Outputs(), torch.tensor([0, 1, 0, 1]))
    loss.finish(metrics, "eval")
    assert metrics["eval_loss"] == 0.25 and loss.rows is None
