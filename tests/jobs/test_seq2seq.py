"""seq2seq: an encoder-decoder (a tiny T5 built in code) trained on source/target rows by a real worker."""

from __future__ import annotations

import json
import string
from pathlib import Path

import pytest

from ftjobs.client.models import TASK_FORMATS, FileFormat, FullMethod, Hyperparameters, JobCreate, LoraMethod, Task
from ftjobs.core.keys import artifact_path
from tests.jobs.helpers import store_root, submit, upload_rows, wait_for
from tests.tiny_models import build_tiny_t5

LETTERS = string.ascii_lowercase


@pytest.fixture(scope="session")
def tiny_t5(model_root: Path) -> Path:
    return build_tiny_t5(model_root / "tiny-t5")


def rows(starts: str, repeat: int = 1) -> list[dict]:
    """'after c' -> 'd e f g': the next four letters."""
    return [
        {"source": f"after {c}", "target": " ".join(LETTERS[LETTERS.index(c) + 1 : LETTERS.index(c) + 5])}
        for _ in range(repeat)
        for c in starts
    ]


def test_seq2seq_takes_source_target_files() -> None:
    assert TASK_FORMATS[Task.seq2seq] == {FileFormat.source_target}


def test_lora_wraps_an_encoder_decoder_as_seq2seq(tiny_t5: Path) -> None:
    import torch
    from peft import PeftModelForSeq2SeqLM
    from transformers import AutoModelForSeq2SeqLM

    from ftjobs.jobs.training.methods import apply_method, parameter_counts

    model = apply_method(AutoModelForSeq2SeqLM.from_pretrained(tiny_t5), LoraMethod(r=4), Task.seq2seq)
    assert isinstance(model, PeftModelForSeq2SeqLM)
    trainable, total = parameter_counts(model)
    assert 0 < trainable < total / 10
    loss = model(input_ids=torch.tensor([[1, 68, 73]]), labels=torch.tensor([[69, 2]])).loss
    loss.backward()  # gradients reach the adapters
    assert any(p.grad is not None for n, p in model.named_parameters() if "lora_" in n)


def test_seq2seq_trains_scores_and_reloads(redis, env, worker, tiny_t5: Path) -> None:
    import torch
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    starts = LETTERS[:16]
    request = JobCreate(
        model=str(tiny_t5),
        task=Task.seq2seq,
        training_file=upload_rows(env, rows(starts, repeat=4)),
        validation_file=upload_rows(env, rows(starts[::2])),
        # Full fine-tuning here; LoRA on the same task is tests/jobs/test_seq2seq_lora.py.
        method=FullMethod(),
        hyperparameters=Hyperparameters(n_epochs=6, batch_size=8, learning_rate=3e-3, max_seq_length=32),
        eval_samples=4,
    )
    job_id = submit(redis, env, request)
    job = wait_for(redis, job_id, worker=worker, timeout=180)
    assert job["status"] == "succeeded", (job, worker.output()[-3000:])
    baseline, final = job["results"]["baseline"], job["results"]["final"]
    print(f"seq2seq bleu {baseline['bleu']:.1f} -> {final['bleu']:.1f}, rougeL {final['rougeL']:.2f}")
    assert final["eval_loss"] < baseline["eval_loss"]
    assert baseline["bleu"] < 10 and final["bleu"] >= 50 and final["rougeL"] > baseline["rougeL"]
    assert "perplexity" in final and "token_accuracy" in final

    # Reload: the saved model generates what the job recorded as its prediction.
    names = {a["name"] for a in job["artifacts"]}
    assert {"model/model.safetensors", "eval_samples.jsonl", "README.md", "loss_curve.png"} <= names
    art = store_root(env) / artifact_path("default", job_id, "")
    samples = [json.loads(line) for line in (art / "eval_samples.jsonl").read_text().splitlines()]
    assert len(samples) == 4 and samples[1]["input"] == "after c" and samples[1]["reference"] == "d e f g"
    tokenizer = AutoTokenizer.from_pretrained(art / "model")
    model = AutoModelForSeq2SeqLM.from_pretrained(art / "model").eval()
    for sample in samples:
        ids = tokenizer(sample["input"], return_tensors="pt")
        with torch.no_grad():
            out = model.generate(**ids, max_new_tokens=12, do_sample=False, num_beams=1)
        assert tokenizer.decode(out[0], skip_special_tokens=True).strip() == sample["prediction"]
