"""Diagnostics judged on the task metric: a rising validation loss alone is no reason to stop early, a falling task
metric is; train losses are smoothed; the loss curve shows the task metric beside the losses."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ftjobs.client.models import EarlyStopping, Task
from ftjobs.jobs.data.examples import causal_examples
from ftjobs.jobs.data.read import Row
from ftjobs.jobs.evaluation import diagnostics
from ftjobs.jobs.outputs.plots import write_loss_curve
from ftjobs.jobs.training.trainer import JobTrainer, PadCollator
from tests.jobs.test_safeguards import COLOURS, qa
from tests.tiny_models import build_tiny_bert


def evals(*columns: tuple[str, list[float]], every: int = 100) -> list[dict[str, Any]]:
    """Evaluation points at steps 0, every, 2 * every ... with the named values."""
    n = len(columns[0][1])
    return [{"step": every * i, "values": {name: vals[i] for name, vals in columns}} for i in range(n)]


def trains(losses: list[float], every: int = 10) -> list[dict[str, Any]]:
    return [{"step": every * (i + 1), "values": {"loss": x}} for i, x in enumerate(losses)]


def test_tracked_metric_is_the_jobs() -> None:
    assert diagnostics.tracked_metric(Task.classification) == ("f1", True)
    assert diagnostics.tracked_metric(Task.classification, EarlyStopping(metric="accuracy")) == ("accuracy", True)
    assert diagnostics.tracked_metric(Task.classification, EarlyStopping(metric="eval_loss")) == ("loss", False)
    assert diagnostics.tracked_metric(Task.causal_lm, EarlyStopping(metric="perplexity")) == ("loss", False)
    assert diagnostics.tracked_metric(Task.seq2seq) == ("loss", False)


def test_a_task_metric_still_improving_is_not_advised_to_stop(tmp_path: Path) -> None:
    # Synthetic, on purpose: the curve issue 14 reported from amazon+yelp (validation loss 19% above its best while
    # accuracy went 0.912 -> 0.900 -> 0.932; one train loss of 0.697 between 0.19 and 0.08).
    history = evals(("loss", [0.69, 0.25, 0.27, 0.2975]), ("accuracy", [0.5, 0.912, 0.900, 0.932]))
    falling = [0.69, 0.5, 0.35, 0.3, 0.25, 0.22, 0.2, 0.19, 0.15, 0.697, 0.08, 0.1, 0.09, 0.07, 0.08, 0.06, 0.05]
    train = trains(falling + [0.05, 0.04, 0.05, 0.04, 0.04, 0.03, 0.03, 0.03, 0.03, 0.03, 0.02, 0.02, 0.02])
    judged = diagnostics.diagnose(train, history, metric="accuracy", greater_is_better=True)
    assert judged == []  # nothing alarming: early stopping on accuracy would have kept worse weights
    said = diagnostics.summary(history, "accuracy", greater_is_better=True)
    assert said is not None and "still improving" in said and "no need to stop early" in said and "19%" in said

    # Judged on the loss alone, the same run is flagged; its train loss at the best step is smoothed, not the spike.
    (flag,) = diagnostics.diagnose(train, history, metric="loss")
    assert flag["flag"] == "overfitting" and flag["numbers"]["stop_at_step"] == 100
    assert train[9]["step"] == 100 and train[9]["values"]["loss"] == 0.697  # the one noisy value logged at the best
    assert flag["numbers"]["train_loss_at_best"] == 0.15  # the rolling median around step 100
    assert "Stop at step 100" in flag["message"] and "metric loss" in flag["message"]

    # The same run whose accuracy ended below its best is advised to stop at the best step, naming the metric.
    fell = evals(("loss", [0.69, 0.25, 0.27, 0.2975]), ("accuracy", [0.5, 0.932, 0.910, 0.900]))
    (flag,) = diagnostics.diagnose(train, fell, metric="accuracy", greater_is_better=True)
    assert flag["numbers"]["stop_at_step"] == 100 and flag["numbers"]["best_metric"] == 0.932
    assert "Validation accuracy was best at step 100 (0.932) and ended at 0.9" in flag["message"]
    assert "Stop at step 100: set early_stopping with metric accuracy" in flag["message"]

    # Worse at the task while the train loss did not fall either: unstable, not memorising.
    (flag,) = diagnostics.diagnose(
        trains([0.69, 0.3, 0.25, 0.3, 0.35, 0.4]), fell, metric="accuracy", greater_is_better=True
    )
    assert flag["flag"] == "unstable" and "lower the learning rate" in flag["message"]

    png = write_loss_curve(
        tmp_path, {"train": train, "eval": history}, title="ftjob-x: classification", metric="accuracy"
    )
    assert png is not None and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_real_overfitting_run_is_advised_to_stop(tiny_causal_lm: Path, tmp_path: Path) -> None:
    # A real tiny run: training teaches one colour per thing, validation asks for another, so the better the
    # model learns the training data, the worse its validation loss (as in test_early_stopping_keeps_the_best_weights).
    from transformers import AutoModelForCausalLM, AutoTokenizer, PrinterCallback, TrainingArguments, set_seed

    wrong = {k: c for k, c in zip(COLOURS, list(COLOURS.values())[1:] + list(COLOURS.values())[:1], strict=True)}
    set_seed(0)
    tok = AutoTokenizer.from_pretrained(tiny_causal_lm)
    model = AutoModelForCausalLM.from_pretrained(tiny_causal_lm, dtype=torch.float32)

    def examples(rows: list[dict]) -> list[dict]:
        return causal_examples([Row(i + 1, r, "training_file") for i, r in enumerate(rows)], tok, 32, False)[0]

    args = TrainingArguments(
        output_dir=str(tmp_path / "scratch"),
        per_device_train_batch_size=8,
        per_device_eval_batch_size=8,
        max_steps=18,  # the validation loss is lowest at step 6, then climbs
        learning_rate=3e-3,
        lr_scheduler_type="constant",
        max_grad_norm=0.5,
        eval_strategy="steps",
        eval_steps=3,
        logging_steps=1,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
        remove_unused_columns=False,
        label_names=["labels"],
        prediction_loss_only=True,
        seed=0,
    )
    trainer = JobTrainer(
        model=model,
        args=args,
        train_dataset=examples(qa(48, COLOURS)),
        eval_dataset=examples(qa(12, wrong)),
        data_collator=PadCollator(tok.pad_token_id),
    )
    trainer.remove_callback(PrinterCallback)
    trainer.train()
    logged = trainer.state.log_history
    train = [{"step": e["step"], "values": {"loss": e["loss"]}} for e in logged if "loss" in e]
    history = [{"step": e["step"], "values": {"loss": e["eval_loss"]}} for e in logged if "eval_loss" in e]
    losses = [h["values"]["loss"] for h in history]
    best = min(range(len(losses)), key=losses.__getitem__)
    print("eval losses", [round(x, 3) for x in losses])
    assert best < len(losses) - 1 and losses[-1] > 1.1 * losses[best]  # the run did overfit

    (flag,) = [f for f in diagnostics.diagnose(train, history, metric="loss") if f["flag"] == "overfitting"]
    assert flag["numbers"]["stop_at_step"] == history[best]["step"] == flag["numbers"]["best_step"]
    assert f"Stop at step {history[best]['step']}" in flag["message"]
    smoothed_at_best = diagnostics.smoothed([t["values"]["loss"] for t in train])[history[best]["step"] - 1]
    assert flag["numbers"]["train_loss_at_best"] == smoothed_at_best


def test_a_real_classification_run_that_overfits_is_advised_to_stop_at_its_best_f1(model_root: Path) -> None:
    # A real tiny run: the label is the first word, but 30% of the training labels are flipped and every row carries
    # four random words. The model first learns the first word (validation f1 up), then memorises the flipped rows
    # by their random words (validation f1 down) while its train loss keeps falling.
    import random

    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        PrinterCallback,
        Trainer,
        TrainingArguments,
        set_seed,
    )

    from ftjobs.jobs.evaluation.metrics import classification_compute_metrics, eval_values

    bert = build_tiny_bert(model_root / "tiny-bert")
    tok = AutoTokenizer.from_pretrained(bert)
    rng = random.Random(0)
    words = (
        "apple river stone cloud green table seven music light paper window horse candle orange silver garden".split()
    )

    def rows(n: int, noise: float) -> list[dict[str, Any]]:
        out = []
        for i in range(n):
            text = ("good " if i % 2 else "bad ") + " ".join(rng.choice(words) for _ in range(4))
            label = 1 - i % 2 if rng.random() < noise else i % 2
            out.append({**tok(text, truncation=True, max_length=32), "labels": label})
        return out

    set_seed(0)
    train_rows, validation_rows = rows(48, 0.3), rows(40, 0.0)
    args = TrainingArguments(
        output_dir=str(model_root / "scratch-overfit"),
        per_device_train_batch_size=8,
        max_steps=60,
        learning_rate=3e-3,
        lr_scheduler_type="constant",
        eval_strategy="steps",
        eval_steps=5,
        logging_steps=1,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
        seed=0,
    )
    trainer = Trainer(
        model=AutoModelForSequenceClassification.from_pretrained(bert, num_labels=2),
        args=args,
        train_dataset=train_rows,
        eval_dataset=validation_rows,
        data_collator=DataCollatorWithPadding(tok),
        compute_metrics=classification_compute_metrics(["bad", "good"]),
    )
    trainer.remove_callback(PrinterCallback)
    trainer.train()
    logged = trainer.state.log_history
    train = [{"step": e["step"], "values": {"loss": e["loss"]}} for e in logged if "loss" in e]
    history = [{"step": e["step"], "values": eval_values(e, causal=False)} for e in logged if "eval_loss" in e]
    f1 = [(h["step"], h["values"]["f1"]) for h in history]
    print("validation f1", [(s, round(v, 3)) for s, v in f1])
    best_step, best = max(reversed(f1), key=lambda p: p[1])
    assert best_step < f1[-1][0] and f1[-1][1] < best - 0.05  # the run did overfit on its task metric

    (flag,) = [f for f in diagnostics.diagnose(train, history, metric="f1", greater_is_better=True)]
    assert flag["flag"] == "overfitting" and flag["numbers"]["stop_at_step"] == best_step
    assert flag["numbers"]["best_metric"] == best and flag["numbers"]["last_metric"] == f1[-1][1]
    assert f"Validation f1 was best at step {best_step}" in flag["message"]
    assert f"Stop at step {best_step}: set early_stopping with metric f1" in flag["message"]
