"""Generation-based evaluation: the metrics themselves, and a tiny causal LM that learns a task end to end."""

from __future__ import annotations

import json
import string
from pathlib import Path

import pytest

from ftjobs.client.models import Task
from ftjobs.jobs.data.examples import build_datasets
from ftjobs.jobs.data.read import Row
from ftjobs.jobs.errors import IntegrationUnavailable
from ftjobs.jobs.evaluation.generation import text_metrics
from ftjobs.jobs.outputs.model_card import model_card
from ftjobs.jobs.outputs.plots import write_loss_curve
from ftjobs.jobs.outputs.trackers import check
from tests.tiny_models import build_tiny_tokenizer

LETTERS = string.ascii_lowercase


def test_text_metrics_rank_predictions() -> None:
    refs = ["the sky is blue today", "grass is green in spring"]
    exact = text_metrics(refs, refs)
    assert exact["bleu"] == pytest.approx(100.0) and exact["rouge1"] == exact["rougeL"] == pytest.approx(1.0)
    partial = text_metrics(["the sky is red today", "grass is green"], refs)
    wrong = text_metrics(["moon fish", "cat dog"], refs)
    assert exact["bleu"] > partial["bleu"] > wrong["bleu"] == 0.0
    assert 0.0 < partial["rouge2"] < partial["rouge1"] < 1.0 and wrong["rouge1"] == 0.0


def test_rouge_scores_any_script() -> None:
    # rouge-score's default tokenizer drops non-ASCII text: every prediction would score 0 (or 1) against it.
    refs = ["кошка сидит на окне", "猫 在 窗户 上"]
    assert text_metrics(refs, refs)["rouge1"] == pytest.approx(1.0)
    assert text_metrics(["собака сидит на окне", "狗 在 窗户 上"], refs)["rouge1"] == pytest.approx(0.75)


def test_train_on_inputs_puts_the_prompt_in_the_loss() -> None:
    tok = build_tiny_tokenizer()
    rows = [Row(i + 1, {"prompt": "say red", "completion": " green blue"}, "training_file") for i in range(4)]
    masked = build_datasets(Task.causal_lm, tok, rows, rows[:2], 64, 0.0, 0)
    full = build_datasets(Task.causal_lm, tok, rows, rows[:2], 64, 0.0, 0, train_on_inputs=True)
    n_masked = sum(t != -100 for t in masked.train[0]["labels"])
    assert full.train[0]["labels"] == full.train[0]["input_ids"]
    assert 0 < n_masked < len(full.train[0]["labels"])
    assert masked.train[0]["input_ids"] == full.train[0]["input_ids"]


def test_missing_integration_fails_naming_the_field() -> None:
    pytest.importorskip("sacrebleu")
    missing = [n for n in ("mlflow", "wandb", "tensorboard") if not _installed(n)]
    if not missing:
        pytest.skip("every integration is installed (tests/jobs/test_integrations.py covers a disabled one)")
    with pytest.raises(IntegrationUnavailable) as info:
        check(["tensorboard", *missing])
    assert info.value.param == "integrations" and info.value.code == "integration_unavailable"
    check([])  # nothing requested: nothing to check


def _installed(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def test_loss_curve_and_model_card(tmp_path: Path) -> None:
    history = {
        "train": [{"step": s, "values": {"loss": 3.0 / s}} for s in range(1, 11)],
        "eval": [{"step": 0, "values": {"loss": 3.5}}, {"step": 10, "values": {"loss": 0.4}}],
    }
    png = write_loss_curve(tmp_path, history)
    assert png is not None and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    assert write_loss_curve(tmp_path / "none", {"train": [], "eval": []}) is None
    card = model_card(
        job={"job_id": "ftjob-x", "model": "/m/tiny", "task": "causal_lm", "method": "lora"},
        data={"training_file": "file-a", "n_train": 90, "n_validation": 10},
        hyperparameters={"learning_rate": 0.01, "n_epochs": 3},
        results={"baseline": {"eval_loss": 3.5, "bleu": 1.25}, "final": {"eval_loss": 0.4, "bleu": 88.0}},
        weights_dir="adapter",
    )
    assert "| bleu | 1.25 | 88 |" in card and "| eval_loss | 3.5 | 0.4 |" in card
    assert "`/m/tiny`" in card and "| learning_rate | 0.01 |" in card and "| training | `file-a` | 90 |" in card


# ------------------------------------------------------------------ a task the tiny LM learns, end to end


def successor_rows(starts: str, repeat: int = 1) -> list[dict]:
    """'after c :' -> 'd e f g h i': the next six letters of the alphabet."""
    return [
        {"prompt": f"after {c} :", "completion": " " + " ".join(LETTERS[LETTERS.index(c) + 1 : LETTERS.index(c) + 7])}
        for _ in range(repeat)
        for c in starts
    ]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_generation_bleu_rises_as_the_model_learns(client, redis, worker, tiny_causal_lm: Path, tmp_path) -> None:
    starts = LETTERS[:20]  # a..t: six successors stay inside the alphabet
    # The validation prompts occur in training: a 0.2M-parameter random model memorises the 20 answers
    # (held-out starting letters it does not generalise to: BLEU ~7); what is measured is the generation.
    train = client.files.upload(write_jsonl(tmp_path / "train.jsonl", successor_rows(starts, repeat=4)))
    valid = client.files.upload(write_jsonl(tmp_path / "valid.jsonl", successor_rows(starts[::2])))
    job = client.jobs.create(
        model=str(tiny_causal_lm),
        training_file=train.id,
        validation_file=valid.id,
        method={"type": "full"},
        hyperparameters={"n_epochs": 6, "batch_size": 8, "learning_rate": 3e-3, "max_seq_length": 32},
        eval_samples=3,
    )
    job = client.jobs.wait(job.id, timeout=180)
    assert job.status == "succeeded", (job.error, worker.output()[-3000:])
    baseline, final = job.results["baseline"], job.results["final"]
    assert baseline["bleu"] < 10 and final["bleu"] >= 50, (baseline, final)
    assert final["rougeL"] > baseline["rougeL"] and final["token_accuracy"] > baseline["token_accuracy"]
    assert final["eval_loss"] < baseline["eval_loss"]
    assert job.resolved_hyperparameters["eval_generation_limit"] == 64
    assert job.resolved_hyperparameters["eval_samples"] == 3

    # Generation metrics are eval points too (step 0 and the last step), and an event says so.
    points = [p for p in client.jobs.all_metrics(job.id) if p.split == "eval" and "bleu" in p.values]
    assert [p.step for p in points] == [0, job.progress.step]
    assert any("baseline generation" in e.message for e in client.jobs.events(job.id, limit=1000).data)

    # The qualitative review through the API; the loss curve and the model card are artifacts.
    samples = client.jobs.samples(job.id)
    assert len(samples) == 3 and samples[0]["input"] == "after a :" and samples[0]["reference"] == " b c d e f g"
    assert {"prediction", "baseline_prediction"} <= set(samples[0])
    names = {a.name for a in client.jobs.artifacts(job.id)}
    assert {"eval_samples.jsonl", "loss_curve.png", "README.md"} <= names
    card = client.jobs.download(job.id, "README.md", tmp_path / "README.md").read_text()
    assert "| bleu |" in card and f"`{tiny_causal_lm.name}`" in card and str(tiny_causal_lm) not in card
    print(
        f"bleu {baseline['bleu']:.1f} -> {final['bleu']:.1f}, token accuracy "
        f"{baseline['token_accuracy']:.2f} -> {final['token_accuracy']:.2f}, {job.results['train_seconds']} s"
    )


def test_job_asking_for_a_missing_integration_fails(client, worker, tiny_causal_lm: Path, tmp_path) -> None:
    missing = next((n for n in ("mlflow", "wandb", "tensorboard") if not _installed(n)), None)
    if missing is None:
        pytest.skip("every integration is installed")
    train = client.files.upload(write_jsonl(tmp_path / "train.jsonl", successor_rows(LETTERS[:8])))
    job = client.jobs.create(model=str(tiny_causal_lm), training_file=train.id, integrations=[missing])
    job = client.jobs.wait(job.id, timeout=120)
    assert job.status == "failed" and job.error is not None
    assert job.error.code == "integration_unavailable" and job.error.param == "integrations"
    assert missing in job.error.message and "Traceback" not in job.error.message
    assert client.jobs.artifacts(job.id) == []


def test_classification_samples_hold_the_predicted_label(tiny_causal_lm: Path) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from ftjobs.jobs.evaluation.generation import Evaluator
    from ftjobs.jobs.interrupts import Cancelled

    tok = AutoTokenizer.from_pretrained(tiny_causal_lm)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_causal_lm, num_labels=2)
    model.config.pad_token_id = tok.pad_token_id
    rows = [
        Row(i + 1, {"text": t, "label": lab}, "validation_file")
        for i, (t, lab) in enumerate(
            [("the sky is blue", "nice"), ("grass is green", "nice"), ("snow", "cold"), ("moon", "cold")]
        )
    ]
    evaluator = Evaluator(
        Task.classification, tok, rows, limit=64, samples=3, max_seq_length=16, labels=["cold", "nice"]
    )
    assert evaluator.run(model, "final", Cancelled) == {}  # the Trainer's evaluation has the metrics
    samples = evaluator.sample_rows()
    assert [s["text"] for s in samples] == ["the sky is blue", "grass is green", "snow"]
    assert [s["label"] for s in samples] == ["nice", "nice", "cold"]
    assert all(s["predicted_label"] in ("cold", "nice") for s in samples)
