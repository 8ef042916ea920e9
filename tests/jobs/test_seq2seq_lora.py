"""seq2seq + LoRA end to end: the API, a real worker, a tiny T5; the adapter and the merged model reload."""

from __future__ import annotations

import json
from pathlib import Path

from ftjobs.client.models import JobStatus
from ftjobs.jobs.evaluation.generation import EXTRA_NEW_TOKENS
from tests.jobs.test_seq2seq import LETTERS, rows, tiny_t5  # noqa: F401 - tiny_t5 is a fixture


def write_jsonl(path: Path, items: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in items))
    return path


def generate(model, tokenizer, text: str, reference: str) -> str:  # type: ignore[no-untyped-def]
    """Greedy, with the job's budget: the reference's length + EXTRA_NEW_TOKENS."""
    import torch

    ids = tokenizer(text, return_tensors="pt")
    budget = len(tokenizer(reference, add_special_tokens=False)["input_ids"]) + EXTRA_NEW_TOKENS
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=budget, do_sample=False, num_beams=1)
    return str(tokenizer.decode(out[0], skip_special_tokens=True)).strip()


def test_lora_seq2seq_job_learns_and_its_adapter_and_merged_model_reload(client, worker, tiny_t5, tmp_path):  # type: ignore[no-untyped-def]  # noqa: F811
    import torch
    from peft import PeftModel
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    starts = LETTERS[:16]
    train = client.files.upload(write_jsonl(tmp_path / "train.jsonl", rows(starts, repeat=4)))
    valid = client.files.upload(write_jsonl(tmp_path / "valid.jsonl", rows(starts[::2])))
    job = client.jobs.create(
        model=str(tiny_t5),
        task="seq2seq",
        training_file=train.id,
        validation_file=valid.id,
        method={"type": "lora", "merge": True},  # target modules: peft's default for T5 (q, v)
        hyperparameters={"n_epochs": 20, "batch_size": 8, "learning_rate": 1e-2, "max_seq_length": 32},
        eval_samples=4,
    )
    job = client.jobs.wait(job.id, timeout=180)
    assert job.status == JobStatus.succeeded, (job.error, worker.output()[-3000:])
    baseline, final = job.results["baseline"], job.results["final"]
    print(f"seq2seq lora: eval_loss {baseline['eval_loss']:.3f} -> {final['eval_loss']:.3f}, "
          f"bleu {baseline['bleu']:.1f} -> {final['bleu']:.1f}")
    assert final["eval_loss"] < 0.5 * baseline["eval_loss"]
    assert baseline["bleu"] < 10 and final["bleu"] >= 50
    assert sorted(job.resolved_hyperparameters["method"]["target_modules"]) == ["q", "v"]

    names = {a.name for a in client.jobs.artifacts(job.id)}
    assert {"adapter/adapter_model.safetensors", "adapter/adapter_config.json", "model/model.safetensors"} <= names
    out = tmp_path / "out"
    client.jobs.download_all(job.id, out)
    samples = [json.loads(line) for line in (out / "eval_samples.jsonl").read_text().splitlines()]
    assert len(samples) == 4 and samples[1] == {**samples[1], "input": "after c", "reference": "d e f g"}
    assert sum(s["prediction"] == s["reference"] for s in samples) >= 2  # it learned, not just moved

    # The adapter on the base generates exactly what the job recorded as its predictions.
    tokenizer = AutoTokenizer.from_pretrained(out / "adapter")
    adapted = PeftModel.from_pretrained(AutoModelForSeq2SeqLM.from_pretrained(tiny_t5), out / "adapter").eval()
    predictions = [s["prediction"] for s in samples]
    assert [generate(adapted, tokenizer, s["input"], s["reference"]) for s in samples] == predictions

    # merge: true -> model/ is a plain T5 (no peft needed) with the same outputs.
    merged = AutoModelForSeq2SeqLM.from_pretrained(out / "model").eval()
    assert not any("lora" in n for n, _ in merged.named_parameters())
    inputs = tokenizer([s["input"] for s in samples], return_tensors="pt", padding=True)
    labels = tokenizer([s["reference"] for s in samples], return_tensors="pt", padding=True)["input_ids"]
    with torch.no_grad():
        want, got = adapted(**inputs, labels=labels).logits, merged(**inputs, labels=labels).logits
        untrained = AutoModelForSeq2SeqLM.from_pretrained(tiny_t5)(**inputs, labels=labels).logits
    assert torch.allclose(got, want, atol=1e-4)
    assert not torch.allclose(got, untrained, atol=1e-2)  # the merge changed the base
    assert [generate(merged, tokenizer, s["input"], s["reference"]) for s in samples] == predictions
