"""Batched evaluation generation: the same greedy outputs as one at a time, progress per batch, options echoed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ftjobs.client.models import EvalGeneration, JobCreate, Task
from ftjobs.jobs.data.read import Row
from ftjobs.jobs.evaluation import greedy
from ftjobs.jobs.evaluation.batched import budget
from ftjobs.jobs.evaluation.generation import Evaluator
from ftjobs.jobs.interrupts import Cancelled
from tests.jobs.test_evaluation import LETTERS, successor_rows, write_jsonl
from tests.service.conftest import assert_error

# Prompts of clearly different token lengths: batches need padding, and sorting moves them around.
PROMPTS = [
    "hi",
    "the quick brown fox jumps over the lazy dog and then runs far away",
    "after c :",
    "a b c d e f g h i j k l m n o p",
    "grass is green",
    "say red twice, then say blue three times",
    "x",
]


def _rows(task: Task) -> list[Row]:
    refs = ["d e f", "green blue", "one two three four", "ok", "the sky", "red red blue", "z"]
    if task == Task.seq2seq:
        return [
            Row(i + 1, {"source": p, "target": r}, "validation_file")
            for i, (p, r) in enumerate(zip(PROMPTS, refs, strict=True))
        ]
    return [
        Row(i + 1, {"prompt": p, "completion": " " + r}, "validation_file")
        for i, (p, r) in enumerate(zip(PROMPTS, refs, strict=True))
    ]


def _outputs(model: Any, tok: Any, task: Task, batch_size: int, **options: Any) -> tuple[list[str], list[int]]:
    """(predictions in row order, the sizes each progress tick reported)."""
    evaluator = Evaluator(
        task, tok, _rows(task), limit=64, samples=len(PROMPTS), max_seq_length=48,
        options=EvalGeneration(batch_size=batch_size, **options),
    )  # fmt: skip
    ticks: list[int] = []
    evaluator.on_item = ticks.append
    metrics = evaluator.run(model, "final", Cancelled)
    assert {"bleu", "rouge1", "token_accuracy"} <= set(metrics)
    return evaluator.predictions["final"], ticks


def _same_as_one_at_a_time(model: Any, tok: Any, task: Task) -> None:
    lengths = {len(tok(p)["input_ids"]) for p in PROMPTS}
    assert len(lengths) >= 5  # padding really happens
    single, single_ticks = _outputs(model, tok, task, batch_size=1)
    batched, batched_ticks = _outputs(model, tok, task, batch_size=3)
    assert batched == single
    assert any(single)  # a random model still says something
    assert single_ticks == [1] * len(PROMPTS) and batched_ticks == [3, 3, 1]  # progress in examples, per batch


def test_batched_causal_lm_matches_one_at_a_time(tiny_causal_lm: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_causal_lm)
    model = AutoModelForCausalLM.from_pretrained(tiny_causal_lm)
    _same_as_one_at_a_time(model, tok, Task.causal_lm)


def test_batched_seq2seq_matches_one_at_a_time(model_root: Path) -> None:
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    from tests.tiny_models import build_tiny_t5

    path = build_tiny_t5(model_root / "tiny-t5")
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSeq2SeqLM.from_pretrained(path)
    # The random T5 only ever says <pad>: let it say words (and stop at EOS) to compare something.
    model.generation_config.suppress_tokens = [i for i in tok.all_special_ids if i != tok.eos_token_id]
    _same_as_one_at_a_time(model, tok, Task.seq2seq)


def _chat_rows() -> list[Row]:
    """Chat turns behind one system turn: every prompt opens with the same template tokens (the shared prefix)."""
    return [
        Row(i + 1, {"messages": [
            {"role": "system", "content": "You translate English into French, briefly."},
            {"role": "user", "content": f"Translate to French: {p}"},
            {"role": "assistant", "content": "ok"},
        ]}, "validation_file")
        for i, p in enumerate(PROMPTS)
    ]  # fmt: skip


def _plain_generate(model: Any, tok: Any, evaluator: Evaluator) -> list[str]:
    """What the evaluation did before batching: `model.generate` on each prompt alone, cut at its budget."""
    import torch

    out = []
    for item in evaluator.items:
        mask = torch.ones(1, len(item.prompt_ids), dtype=torch.long)
        tokens = budget(item, evaluator.options, evaluator.max_seq_length, seq2seq=False)
        with torch.no_grad():
            ids = model.generate(
                input_ids=torch.tensor([item.prompt_ids]), attention_mask=mask,
                max_new_tokens=tokens, do_sample=False, num_beams=1, pad_token_id=tok.pad_token_id,
                eos_token_id=tok.eos_token_id, repetition_penalty=evaluator.options.repetition_penalty,
                no_repeat_ngram_size=evaluator.options.no_repeat_ngram_size,
            )[0, len(item.prompt_ids) :]  # fmt: skip
        out.append(str(tok.decode(ids, skip_special_tokens=True)).strip())
    return out


@pytest.mark.parametrize("lora", [False, True])
def test_shared_prefix_batches_match_plain_generate(tiny_causal_lm: Path, lora: bool) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_causal_lm)
    model = AutoModelForCausalLM.from_pretrained(tiny_causal_lm).eval()
    if lora:  # as the job evaluates its trained adapter: a PEFT wrapper around the model
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    assert greedy.supported(model)
    for options in (
        EvalGeneration(batch_size=4),
        EvalGeneration(batch_size=7, repetition_penalty=1.3, no_repeat_ngram_size=2),  # finished rows ride along
    ):
        evaluator = Evaluator(
            Task.causal_lm, tok, _chat_rows(), limit=64, samples=len(PROMPTS), max_seq_length=96, options=options
        )
        prompts = [item.prompt_ids for item in evaluator.items]
        assert greedy.common_prefix(prompts) >= 10 and len({len(p) for p in prompts}) >= 5  # a prefix, then padding
        evaluator.run(model, "final", Cancelled)
        assert evaluator.predictions["final"] == _plain_generate(model, tok, evaluator)
        assert any(evaluator.predictions["final"])


def test_repetition_options_and_cancel_between_batches(tiny_causal_lm: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_causal_lm)
    model = AutoModelForCausalLM.from_pretrained(tiny_causal_lm)
    plain, _ = _outputs(model, tok, Task.causal_lm, batch_size=4)
    curbed, _ = _outputs(model, tok, Task.causal_lm, batch_size=4, no_repeat_ngram_size=1, repetition_penalty=1.5)
    # Repeated tokens within each output (re-encoded: a byte-level BPE may split what it decodes, hence a sum).
    assert _repeats(tok, curbed) < _repeats(tok, plain), (plain, curbed)
    assert curbed != plain

    calls: list[int] = []
    evaluator = Evaluator(
        Task.causal_lm, tok, _rows(Task.causal_lm), limit=64, samples=0, max_seq_length=48,
        should_stop=lambda: bool(calls.append(1)) or len(calls) > 1, options=EvalGeneration(batch_size=2),
    )  # fmt: skip
    ticks: list[int] = []
    evaluator.on_item = ticks.append
    with pytest.raises(Cancelled):
        evaluator.run(model, "final", Cancelled)
    assert ticks == [2] and len(calls) == 2  # asked before each batch: the second ask stopped it


def _repeats(tok: Any, texts: list[str]) -> int:
    return sum(len(ids) - len(set(ids)) for ids in (tok(t, add_special_tokens=False)["input_ids"] for t in texts))


def test_job_echoes_generation_options(client, worker, tiny_causal_lm: Path, tmp_path: Path) -> None:
    rows = successor_rows(LETTERS[:8])
    train = client.files.upload(write_jsonl(tmp_path / "train.jsonl", rows))
    valid = client.files.upload(write_jsonl(tmp_path / "valid.jsonl", rows[:5]))
    options = EvalGeneration(batch_size=2, max_new_tokens=6, repetition_penalty=1.3, no_repeat_ngram_size=2)
    request = JobCreate(
        model=str(tiny_causal_lm),
        training_file=train.id,
        validation_file=valid.id,
        hyperparameters={"max_steps": 1, "batch_size": 4, "max_seq_length": 32},
        eval_samples=2,
        eval_generation=options,
    )
    job = client.jobs.wait(client.jobs.create(request).id, timeout=300)
    assert job.status == "succeeded", (job.error, worker.output()[-3000:])
    assert job.results["generation"] == {**options.model_dump(), "examples": 5}
    assert {"bleu", "rougeL"} <= set(job.results["final"]) and "bleu" in job.results["baseline"]
    # Progress in examples, one batch at a time: 2 + 2 + 1 of 5 (the last event of a phase says done).
    done = [
        e.data for e in client.jobs.events(job.id, limit=1000).data
        if e.data and e.data.get("label") == "final generation"
    ]  # fmt: skip
    assert done and done[-1]["done"] == done[-1]["total"] == 5 and done[-1]["unit"] == "examples"


def test_bad_generation_options_are_422_naming_the_field(client, http, tiny_causal_lm: Path, tmp_path: Path) -> None:
    train = client.files.upload(write_jsonl(tmp_path / "train.jsonl", successor_rows(LETTERS[:4])))
    bad = {
        "batch_size": 0,
        "max_new_tokens": 5000,
        "repetition_penalty": 0.5,
        "no_repeat_ngram_size": -1,
        "temperature": 0.7,  # not an option: greedy only
    }
    for name, value in bad.items():
        body = {"model": str(tiny_causal_lm), "training_file": train.id, "eval_generation": {name: value}}
        error = assert_error(http.post("/v1/jobs", json=body), 422, "validation_error", param=f"eval_generation.{name}")
        assert name in error["message"] or "eval_generation" in error["message"], error
