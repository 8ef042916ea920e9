"""hyperparameters.packing (and group_by_length, gradient_checkpointing): packed rows keep every example apart."""

from __future__ import annotations

import itertools
import random
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer
from transformers.trainer_pt_utils import LengthGroupedSampler

from ftjobs.client.models import Hyperparameters, JobCreate, LoraMethod, Task
from ftjobs.jobs.data.examples import IGNORE_INDEX, causal_examples, ensure_chat_template
from ftjobs.jobs.data.read import Row
from ftjobs.jobs.training.methods import apply_method
from ftjobs.jobs.training.packing import pack_examples
from ftjobs.jobs.training.trainer import PadCollator, training_arguments
from tests.jobs.helpers import events, submit, upload_rows, wait_for
from tests.service.conftest import assert_error

WORDS = "the quick brown fox jumps over the lazy dog what is the colour of the sky blue green".split()


def sft_rows(n: int, seed: int = 0) -> list[dict]:
    """Prompt/completion, chat and plain-text rows of varied lengths."""
    rng = random.Random(seed)

    def words(lo: int, hi: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))

    rows: list[dict] = []
    for i in range(n):
        if i % 3 == 0:
            rows.append({"prompt": words(2, 12) + " ?", "completion": " " + words(1, 8)})
        elif i % 3 == 1:
            rows.append(
                {"messages": [{"role": "user", "content": words(2, 10)}, {"role": "assistant", "content": words(1, 6)}]}
            )
        else:
            rows.append({"text": words(3, 20)})
    return rows


def examples(tiny_causal_lm: Path, n: int) -> list[dict]:
    tok = AutoTokenizer.from_pretrained(tiny_causal_lm)
    ensure_chat_template(tok)
    rows = [Row(i + 1, r, "training_file") for i, r in enumerate(sft_rows(n))]
    return causal_examples(rows, tok, 64, train_on_inputs=False)[0]


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_packed_loss_equals_unpacked_loss_and_prompts_stay_masked(tiny_causal_lm: Path, attention: str) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny_causal_lm, attn_implementation=attention).eval()
    pad_id = model.config.pad_token_id
    train = examples(tiny_causal_lm, 24)
    rows = pack_examples(train, 64)
    assert len(rows) < len(train) and all(len(r["input_ids"]) <= 64 for r in rows)
    assert "attention_mask" not in rows[0]  # position_ids alone make transformers mask per example

    # Every example's labels survive in its row: prompt tokens -100, only the first label (which no token of the
    # example predicts) becomes -100 too, so no example learns its neighbour's first token.
    packed_labels, original = [], sorted(tuple(e["labels"][1:]) for e in train)
    for row in rows:
        starts = [i for i, p in enumerate(row["position_ids"]) if p == 0] + [len(row["position_ids"])]
        assert all(row["labels"][s] == IGNORE_INDEX for s in starts[:-1])
        packed_labels += [tuple(row["labels"][a + 1 : b]) for a, b in itertools.pairwise(starts)]
    assert sorted(packed_labels) == original
    assert any(IGNORE_INDEX in labels for labels in original)  # there were prompts to keep masked

    collate = PadCollator(pad_id)
    with torch.no_grad():  # no cache, as in training (TrainingArguments.use_cache): a cache turns packing detection off
        unpacked = model(**collate(train), use_cache=False).loss
        packed = model(**collate(rows), use_cache=False).loss
        # the same rows with an all-ones mask: examples would see each other, and the loss would differ
        width = max(len(r["input_ids"]) for r in rows)
        leaky = model(**collate(rows), attention_mask=torch.ones(len(rows), width), use_cache=False).loss
    assert torch.allclose(packed, unpacked, rtol=1e-5, atol=1e-6), (packed, unpacked)
    assert not torch.allclose(leaky, unpacked, rtol=1e-4, atol=1e-5)


def test_group_by_length_and_gradient_checkpointing_train_lora(tiny_causal_lm: Path, tmp_path: Path) -> None:
    hp = Hyperparameters(
        group_by_length=True, gradient_checkpointing=True, learning_rate=1e-2, batch_size=4, max_steps=1
    )
    args = training_arguments(hp, tmp_path, [], 1, "no", {}, {}, causal=True)
    base = AutoModelForCausalLM.from_pretrained(tiny_causal_lm)
    model = apply_method(base, LoraMethod(r=4, alpha=8, dropout=0.0), Task.causal_lm)
    tok = AutoTokenizer.from_pretrained(tiny_causal_lm)
    train = examples(tiny_causal_lm, 16)
    collator = PadCollator(base.config.pad_token_id)
    trainer = Trainer(model=model, args=args, train_dataset=train, processing_class=tok, data_collator=collator)
    assert isinstance(trainer._get_train_sampler(), LengthGroupedSampler)
    trainer.train()
    assert any(getattr(m, "gradient_checkpointing", False) for m in base.modules())  # the layers recompute
    lora_b = [p for name, p in model.named_parameters() if "lora_B" in name]
    assert lora_b and all(p.abs().sum() > 0 for p in lora_b)  # LoRA's zero-initialised B moved: gradients flowed


def test_packing_job_with_lora_and_gradient_checkpointing_records_its_packing(
    redis, env, worker, tiny_causal_lm: Path
) -> None:
    request = JobCreate(
        model=str(tiny_causal_lm),
        training_file=upload_rows(env, sft_rows(40)),
        method=LoraMethod(r=4, alpha=8, dropout=0.0),
        hyperparameters=Hyperparameters(
            n_epochs=1, batch_size=2, learning_rate=1e-2, max_seq_length=64, packing=True, gradient_checkpointing=True
        ),
        eval_generation_limit=0,
        eval_samples=0,
    )
    job = wait_for(redis, submit(redis, env, request), worker=worker, timeout=300)
    assert job["status"] == "succeeded", (job, worker.output()[-3000:])
    resolved = job["resolved"]
    stats = resolved["packing_stats"]
    assert stats["rows_before"] == resolved["n_train"] > stats["rows_after"] > 0
    assert 0 <= stats["padding_fraction"] < stats["padding_fraction_unpacked"]
    assert resolved["total_steps"] == -(-stats["rows_after"] // 2)  # batches of packed rows, not of examples
    assert resolved["effective_batch_size"] == 2
    assert any("packing" in (e.get("data") or {}) for e in events(redis, job_id=job["id"]))


def test_packing_is_refused_for_classification(http, model_root: Path) -> None:
    body = {
        "model": str(model_root / "tiny-model"),
        "task": "classification",
        "training_file": "file-" + "0" * 20,
        "hyperparameters": {"packing": True},
    }
    error = assert_error(http.post("/v1/jobs", json=body), 422, "validation_error", param="hyperparameters.packing")
    assert "causal_lm" in error["message"]
