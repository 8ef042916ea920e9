"""The README's quickstart, executed: real Redis, the real app behind the real client, a real worker process."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import pytest

from ftjobs.client.errors import NotFound, ValidationFailed
from ftjobs.client.models import JobStatus
from ftjobs.launch.demo import DEMO_DATA

WORDS = ["red", "green", "blue", "cat", "dog", "sun", "moon", "tree", "fish", "bird"]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def echo_rows(n: int, seed: int) -> list[dict]:
    """A task a tiny causal LM can learn in a few dozen steps: repeat the prompt's words."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        words = " ".join(rng.choice(WORDS) for _ in range(3))
        rows.append({"prompt": f"say {words} :", "completion": f" {words}"})
    return rows


def sms_rows(name: str, n: int) -> list[dict]:
    rows = [json.loads(line) for line in (DEMO_DATA / name).read_text().splitlines()]
    spam = [r for r in rows if r["label"] == "spam"]
    ham = [r for r in rows if r["label"] == "ham"]
    return spam[: n // 2] + ham[: n - n // 2]


def mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def test_lora_causal_lm_end_to_end(client, worker, tiny_causal_lm, tmp_path):  # type: ignore[no-untyped-def]
    train = client.files.upload(write_jsonl(tmp_path / "train.jsonl", echo_rows(96, seed=1)))
    valid = client.files.upload(write_jsonl(tmp_path / "valid.jsonl", echo_rows(16, seed=2)))
    assert train.format == "prompt_completion" and train.rows == 96

    job = client.jobs.create(
        model=str(tiny_causal_lm),
        task="causal_lm",
        training_file=train.id,
        validation_file=valid.id,
        method={"type": "lora", "r": 8, "alpha": 16},
        hyperparameters={"n_epochs": 4, "batch_size": 8, "learning_rate": 3e-3, "max_seq_length": 32},
    )
    assert job.status == JobStatus.validating_files  # until a worker has checked the files with the tokenizer
    job = client.jobs.wait(job.id, timeout=300)
    assert job.status == JobStatus.succeeded, (job.error, worker.output()[-3000:])
    assert job.progress.step == job.progress.total_steps and job.progress.total_steps > 0

    train_losses = [p.values["loss"] for p in client.jobs.all_metrics(job.id) if p.split == "train"]
    assert len(train_losses) >= 6
    assert mean(train_losses[-3:]) < 0.8 * mean(train_losses[:3])
    assert job.results["final"]["eval_loss"] < job.results["baseline"]["eval_loss"]

    events = client.jobs.events(job.id, limit=1000).data
    statuses = [e.data.get("status") for e in events if e.type == "status"]
    assert statuses == ["validating_files", "queued", "running", "succeeded"]

    paths = client.jobs.download_all(job.id, tmp_path / "out", prefix="adapter/")
    assert any(p.name == "adapter_model.safetensors" for p in paths)

    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    adapter_dir = tmp_path / "out"  # download_all writes the names without their prefix
    tokenizer = AutoTokenizer.from_pretrained(adapter_dir)
    base = AutoModelForCausalLM.from_pretrained(tiny_causal_lm)
    model = PeftModel.from_pretrained(base, adapter_dir).eval()
    inputs = tokenizer("say red cat sun :", return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert out.shape[1] > inputs["input_ids"].shape[1]


def test_lora_classification_on_minilm_improves_f1(client, worker, minilm, tmp_path):  # type: ignore[no-untyped-def]
    train = client.files.upload(write_jsonl(tmp_path / "train.jsonl", sms_rows("sms_spam_train.jsonl", 128)))
    valid = client.files.upload(write_jsonl(tmp_path / "valid.jsonl", sms_rows("sms_spam_heldout.jsonl", 64)))
    assert "all-MiniLM-L6-v2" in [m.id for m in client.models.list().data]  # the README's `ftjobs models`
    job = client.jobs.create(
        model="all-MiniLM-L6-v2",
        task="classification",
        training_file=train.id,
        validation_file=valid.id,
        hyperparameters={"n_epochs": 3, "batch_size": 16, "max_seq_length": 48},
    )
    job = client.jobs.wait(job.id, timeout=400)
    assert job.status == JobStatus.succeeded, (job.error, worker.output()[-3000:])
    assert job.progress.total_steps >= 20
    before, after = job.results["baseline"]["f1"], job.results["final"]["f1"]
    assert after > before + 0.1, (before, after)
    names = {a.name for a in client.jobs.artifacts(job.id)}
    assert {"adapter/adapter_model.safetensors", "labels.json", "metrics.json", "manifest.json"} <= names
    labels = json.loads(client.jobs.download(job.id, "labels.json", tmp_path / "labels.json").read_text())
    assert sorted(str(v) for v in (labels.values() if isinstance(labels, dict) else labels)) == ["ham", "spam"]


def test_cancel_queued_job_without_a_worker(client, tiny_causal_lm, tmp_path):  # type: ignore[no-untyped-def]
    train = client.files.upload(write_jsonl(tmp_path / "train.jsonl", echo_rows(16, seed=3)))
    job = client.jobs.create(model=str(tiny_causal_lm), training_file=train.id)
    assert job.status == JobStatus.validating_files
    job = client.jobs.cancel(job.id)
    assert job.status == JobStatus.cancelled and job.finished_at is not None
    assert client.jobs.wait(job.id, timeout=5).status == JobStatus.cancelled


def test_cancel_running_job_stops_within_a_step(client, worker, tiny_causal_lm, tmp_path):  # type: ignore[no-untyped-def]
    train = client.files.upload(write_jsonl(tmp_path / "train.jsonl", echo_rows(64, seed=4)))
    job = client.jobs.create(
        model=str(tiny_causal_lm),
        training_file=train.id,
        hyperparameters={"n_epochs": 100, "batch_size": 2, "max_seq_length": 32},
    )
    deadline = time.monotonic() + 120
    while (current := client.jobs.get(job.id)).progress.step < 2:
        assert not current.status.is_terminal, (current.error, worker.output()[-2000:])
        assert time.monotonic() < deadline, "job never got past step 2"
        time.sleep(0.2)
    step_at_cancel = current.progress.step
    assert client.jobs.cancel(job.id).cancel_requested
    job = client.jobs.wait(job.id, timeout=60)
    assert job.status == JobStatus.cancelled
    assert job.progress.step < job.progress.total_steps
    assert job.progress.step <= step_at_cancel + 5  # a few steps of polling slack, not an epoch
    assert client.jobs.artifacts(job.id) == []


def test_nonexistent_model_path_fails_with_a_code(client, worker, model_root, tmp_path):  # type: ignore[no-untyped-def]
    train = client.files.upload(write_jsonl(tmp_path / "train.jsonl", echo_rows(16, seed=5)))
    job = client.jobs.create(model=str(model_root / "no-such-model"), training_file=train.id)
    job = client.jobs.wait(job.id, timeout=120)
    assert job.status == JobStatus.failed
    assert job.error is not None and job.error.code == "model_not_found"
    assert "Traceback" not in job.error.message


def test_bad_requests_raise_typed_errors(client, tiny_causal_lm, tmp_path):  # type: ignore[no-untyped-def]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": "a", "completion": \n')
    with pytest.raises(ValidationFailed) as err:
        client.files.upload(bad)
    assert "line 2" in err.value.message

    train = client.files.upload(write_jsonl(tmp_path / "train.jsonl", echo_rows(8, seed=6)))
    with pytest.raises(ValidationFailed) as err:
        client.jobs.create(model=str(tiny_causal_lm), training_file=train.id, hyperparameters={"n_epochs": -1})
    assert err.value.param == "hyperparameters.n_epochs"
    with pytest.raises(NotFound) as err:
        client.jobs.create(model=str(tiny_causal_lm), training_file="file-" + "0" * 20)
    assert err.value.param == "training_file"
