"""Safeguards: L1, dropout, early stopping, diagnostics, confusion/group metrics, EWC/replay and forgetting."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from ftjobs.client.models import EarlyStopping, FullMethod, Hyperparameters, JobCreate, LoraMethod, Task
from ftjobs.jobs.data.examples import causal_examples
from ftjobs.jobs.data.read import Row
from ftjobs.jobs.evaluation import bias, diagnostics
from ftjobs.jobs.training import safeguards
from ftjobs.jobs.training.trainer import JobTrainer, PadCollator
from tests.jobs.helpers import create_job, events, read_job, upload_rows
from tests.tiny_models import build_tiny_bert

COLOURS = {"sky": "blue", "grass": "green", "snow": "white", "the sun": "yellow", "a fox": "brown", "coal": "black"}


def qa(n: int, colours: dict[str, str], offset: int = 0) -> list[dict]:
    items = list(colours.items())
    return [
        {"prompt": f"the colour of {items[(i + offset) % len(items)][0]} is", "completion": f" {c}"}
        for i, c in ((i, items[(i + offset) % len(items)][1]) for i in range(n))
    ]


def run_job(redis, env, monkeypatch, request: JobCreate) -> dict:  # type: ignore[no-untyped-def]
    """One attempt of a job, in this process (jobs.train.run as RQ would call it), without a worker."""
    from ftjobs.jobs.train import run

    for k, v in env.items():
        monkeypatch.setenv(k, v)
    job_id = create_job(redis, request)
    run({"job_id": job_id, "tenant": "default", "attempt": 1})
    return {**read_job(redis, job_id), "events": events(redis, job_id)}


def lm_trainer(model_path: Path, rows: list[dict], steps: int, lr: float, **kw) -> JobTrainer:  # type: ignore[no-untyped-def]
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainingArguments, set_seed

    set_seed(0)
    tok = AutoTokenizer.from_pretrained(model_path)
    model = kw.pop("model", None) or AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    train, _ = causal_examples([Row(i + 1, r, "training_file") for i, r in enumerate(rows)], tok, 64, False)
    args = TrainingArguments(
        output_dir=str(model_path.parent / "scratch"),
        per_device_train_batch_size=4,
        max_steps=steps,
        learning_rate=lr,
        lr_scheduler_type="constant",
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
        remove_unused_columns=False,
        label_names=["labels"],
        seed=0,
    )
    return JobTrainer(model=model, args=args, train_dataset=train, data_collator=PadCollator(tok.pad_token_id), **kw)


def lm_examples(model_path: Path, rows: list[dict]) -> list[dict]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_path)
    return causal_examples([Row(i + 1, r, "reference_file") for i, r in enumerate(rows)], tok, 64, False)[0]


# ----------------------------------------------------------------------------- pure functions


def hist(losses: list[float], every: int = 10) -> list[dict]:
    return [{"step": every * (i + 1), "values": {"loss": x}} for i, x in enumerate(losses)]


def test_diagnose_flags_overfitting_and_underfitting() -> None:
    falling = hist([2.0, 1.5, 1.0, 0.6, 0.3, 0.1])
    overfit = diagnostics.diagnose(falling, hist([1.8, 1.4, 1.3, 1.5, 1.8], every=12))
    assert [f["flag"] for f in overfit] == ["overfitting"]
    assert overfit[0]["numbers"]["best_step"] == 36 and overfit[0]["numbers"]["best_eval_loss"] == 1.3
    assert "early_stopping" in overfit[0]["message"]
    # a validation loss that keeps falling, or rises less than OVERFIT_RISE, is fine
    assert diagnostics.diagnose(falling, hist([1.8, 1.4, 1.3, 1.2])) == []
    assert diagnostics.diagnose(falling, hist([1.8, 1.4, 1.3, 1.35])) == []
    flat = diagnostics.diagnose(hist([2.0, 1.99, 2.01, 1.98]), hist([2.0, 2.0]))
    assert [f["flag"] for f in flat] == ["underfitting"] and flat[0]["numbers"]["relative_drop"] == 0.01
    assert "barely moved" in flat[0]["message"]
    rising = diagnostics.diagnose(hist([1.0, 1.5, 2.0]), [])
    assert [f["flag"] for f in rising] == ["underfitting"] and rising[0]["numbers"]["relative_drop"] == -1.0
    assert "rose (1 -> 2, 100.0% higher)" in rising[0]["message"] and "lower learning rate" in rising[0]["message"]
    assert diagnostics.diagnose([], []) == []


def test_confusion_and_group_metrics() -> None:
    y_true, y_pred = [0, 0, 1, 1, 1, 2], [0, 1, 1, 1, 0, 2]
    assert bias.confusion(y_true, y_pred, 3) == [[1, 1, 0], [1, 2, 0], [0, 0, 1]]
    groups = ["a", "a", "a", "b", "b", "b"]
    g = bias.group_metrics(y_true, y_pred, groups, 3)
    assert g["per_group"]["a"]["accuracy"] == pytest.approx(2 / 3) and g["per_group"]["b"]["n"] == 3
    assert g["gap"]["accuracy"] == pytest.approx(0.0)
    g = bias.group_metrics([0, 0, 1, 1], [0, 0, 0, 0], ["a", "a", "b", "b"], 2)
    assert g["per_group"]["a"]["accuracy"] == 1.0 and g["per_group"]["b"]["accuracy"] == 0.0
    assert g["gap"] == {"accuracy": 1.0, "f1": 1.0}


def test_replay_mix_is_seeded_and_sized() -> None:
    train, reference = list(range(10)), [f"r{i}" for i in range(4)]
    mixed, n = safeguards.replay_mix(train, reference, 0.3, seed=1)
    assert n == 3 and mixed[:10] == train and set(mixed[10:]) <= set(reference) and len(set(mixed[10:])) == 3
    assert safeguards.replay_mix(train, reference, 0.3, seed=1) == (mixed, n)
    more, n = safeguards.replay_mix(train, reference, 1.0, seed=1)  # more than there are: drawn with repeats
    assert n == 10 and len(more) == 20
    assert safeguards.replay_mix(train, reference, 0.0, seed=1) == (train, 0)


def test_early_stopping_args_and_request_checks() -> None:
    loss = safeguards.early_stopping_args(EarlyStopping(metric="perplexity"), Task.causal_lm)
    assert loss["metric_for_best_model"] == "eval_loss" and loss["greater_is_better"] is False
    f1 = safeguards.early_stopping_args(EarlyStopping(metric="eval_f1"), Task.classification)
    assert f1["metric_for_best_model"] == "eval_f1" and f1["greater_is_better"] is True
    with pytest.raises(safeguards.InvalidRequest) as e:
        safeguards.early_stopping_args(EarlyStopping(metric="f1"), Task.causal_lm)
    assert e.value.param == "hyperparameters.early_stopping.metric"

    base = {"model": "m", "training_file": "file-" + "0" * 20}
    with pytest.raises(ValueError, match="early_stopping needs validation data"):
        JobCreate(**base, hyperparameters={"early_stopping": {}, "validation_split": 0})
    JobCreate(**base, validation_file="file-" + "1" * 20, hyperparameters={"early_stopping": {}, "validation_split": 0})
    with pytest.raises(ValueError, match="need a reference_file"):
        JobCreate(**base, hyperparameters={"ewc_lambda": 1.0})
    JobCreate(**base, parent_job_id="ftjob-" + "2" * 20, hyperparameters={"ewc_lambda": 1.0, "replay_ratio": 0.5})
    with pytest.raises(ValueError, match="lr_scheduler"):
        JobCreate(**base, hyperparameters={"lr_scheduler": "exotic"})
    with pytest.raises(ValueError, match="group_field"):
        JobCreate(**base, group_field="group")


def test_dropout_overrides_reach_the_modules(tmp_path: Path, tiny_causal_lm: Path) -> None:
    from ftjobs.jobs.data.inputs import load_model as _load_model

    bert = build_tiny_bert(tmp_path / "bert")
    from transformers import AutoConfig

    overrides = safeguards.dropout_overrides(AutoConfig.from_pretrained(bert), 0.33, 0.22)
    assert overrides == {"hidden_dropout_prob": 0.33, "attention_probs_dropout_prob": 0.22}
    model = _load_model(bert, Task.classification, ["a", "b"], **overrides)
    ps = {name: m.p for name, m in model.named_modules() if isinstance(m, torch.nn.Dropout)}
    assert ps["bert.encoder.layer.0.attention.self.dropout"] == 0.22
    assert ps["bert.encoder.layer.1.output.dropout"] == 0.33 and ps["bert.embeddings.dropout"] == 0.33

    llama_overrides = safeguards.dropout_overrides(AutoConfig.from_pretrained(tiny_causal_lm), None, 0.4)
    llama = _load_model(tiny_causal_lm, Task.causal_lm, None, **llama_overrides)
    assert [layer.self_attn.attention_dropout for layer in llama.model.layers] == [0.4, 0.4]
    with pytest.raises(safeguards.InvalidRequest) as e:  # Llama has no hidden dropout to set
        safeguards.dropout_overrides(llama.config, 0.1, None)
    assert e.value.param == "hyperparameters.hidden_dropout"


# ----------------------------------------------------------------------------- penalties on a real Trainer


def l1_norm(model: torch.nn.Module) -> float:
    return float(sum(p.abs().sum() for p in model.parameters() if p.requires_grad))


def test_l1_penalty_shrinks_the_trainable_weights(tiny_causal_lm: Path) -> None:
    rows = qa(24, COLOURS)
    plain = lm_trainer(tiny_causal_lm, rows, steps=8, lr=2e-3)
    start = l1_norm(plain.model)
    plain.train()
    l1 = lm_trainer(tiny_causal_lm, rows, steps=8, lr=2e-3, penalties=[safeguards.L1Penalty(1e-3)])
    l1.train()
    without, with_l1 = l1_norm(plain.model), l1_norm(l1.model)
    print(f"L1 norm: start {start:.1f}, without penalty {without:.1f}, with {with_l1:.1f}")
    assert with_l1 < without * 0.97 and with_l1 < start


def test_ewc_reduces_forgetting(tiny_causal_lm: Path) -> None:
    task_a = qa(24, COLOURS)
    task_b = qa(24, {k: "purple" for k in COLOURS})  # the same prompts, another answer: B overwrites A
    first = lm_trainer(tiny_causal_lm, task_a, steps=20, lr=3e-3)
    first.train()
    trained_a = {k: v.clone() for k, v in first.model.state_dict().items()}
    ref = safeguards.batches(lm_examples(tiny_causal_lm, task_a), first.data_collator, 8, torch.device("cpu"))

    def forgetting(ewc_lambda: float) -> float:
        first.model.load_state_dict(trained_a)
        trainer = lm_trainer(tiny_causal_lm, task_b, steps=10, lr=1e-3, model=first.model)
        _, before = safeguards.attach_penalties(trainer, 0.0, ewc_lambda, lm_examples(tiny_causal_lm, task_a))
        trainer.train()
        return diagnostics.forgetting(before or 0.0, safeguards.mean_loss(trainer.model, ref))["increase"]

    plain, ewc = forgetting(0.0), forgetting(10.0)
    print(f"loss increase on task A: without EWC {plain:.3f}, with EWC {ewc:.3f}")
    assert plain > 0.5 and ewc < 0.6 * plain


# ----------------------------------------------------------------------------- whole jobs, in process


def test_early_stopping_keeps_the_best_weights(redis, env, monkeypatch, tiny_causal_lm: Path) -> None:  # type: ignore[no-untyped-def]
    # The validation set answers the opposite of training: the better the model learns, the worse it scores.
    wrong = {k: c for k, c in zip(COLOURS, list(COLOURS.values())[1:] + list(COLOURS.values())[:1], strict=True)}
    request = JobCreate(
        model=str(tiny_causal_lm),
        training_file=upload_rows(env, qa(48, COLOURS)),
        validation_file=upload_rows(env, qa(12, wrong)),
        method=FullMethod(),
        eval_generation_limit=0,
        hyperparameters=Hyperparameters(
            n_epochs=20,
            batch_size=8,
            learning_rate=3e-3,
            eval_steps=3,
            lr_scheduler="constant",
            max_grad_norm=0.5,
            early_stopping=EarlyStopping(metric="eval_loss", patience=2),
        ),
    )
    job = run_job(redis, env, monkeypatch, request)
    assert job["status"] == "succeeded", job
    stop, results = job["results"]["early_stopping"], job["results"]
    total = job["resolved"]["total_steps"]
    evals = [p for p in (e["data"] for e in job["events"] if e["type"] == "metrics") if p["split"] == "eval"]
    during = [p for p in evals if p["step"] > 0 and p["step"] < stop["stopped_at_step"] + 1][:-1]  # before the re-eval
    best = min(p["values"]["loss"] for p in during)
    print(f"early stopping: {stop}, total {total}, eval losses {[round(p['values']['loss'], 3) for p in during]}")
    assert stop["stopped_early"] and stop["stopped_at_step"] < total
    # stopped within `patience` evaluations after the best one
    assert stop["stopped_at_step"] - stop["best_step"] <= 2 * 3
    assert results["final"]["eval_loss"] == pytest.approx(best, rel=1e-4) == pytest.approx(stop["best_metric"])
    assert job["resolved"]["lr_scheduler"] == "constant" and job["resolved"]["max_grad_norm"] == 0.5
    train_lrs = {
        p["values"]["learning_rate"]
        for p in (e["data"] for e in job["events"] if e["type"] == "metrics")
        if p["split"] == "train"
    }
    assert train_lrs == {3e-3}  # constant: no linear decay
    assert job["resolved"]["metric_for_best_model"] == "eval_loss" and job["resolved"]["greater_is_better"] is False
    # the run went on past its best for `patience` evaluations: the validation loss rose while the train loss fell
    assert [d["flag"] for d in results["diagnostics"]] == ["overfitting"]
    assert f"kept the weights of step {stop['best_step']}" in results["diagnostics"][0]["message"]
    assert any(e["level"] == "warning" and e["message"].startswith("overfitting") for e in job["events"])


def test_classification_bias_report_and_forgetting(redis, env, monkeypatch, model_root: Path) -> None:  # type: ignore[no-untyped-def]
    bert = build_tiny_bert(model_root / "tiny-bert")
    texts = {"cooking": ["bake the bread", "stir the soup", "chop onions"], "sports": ["kick the ball", "run fast"]}
    rows = [
        {"text": f"{t} {i}", "label": label, "group": "ab"[i % 2]}
        for i in range(20)
        for label, ts in texts.items()
        for t in ts[i % len(ts) : i % len(ts) + 1]
    ]
    reference = [{"text": f"the weather {i}", "label": "sports"} for i in range(6)]
    request = JobCreate(
        model=str(bert),
        task=Task.classification,
        training_file=upload_rows(env, rows),
        reference_file=upload_rows(env, reference),
        group_field="group",
        method=LoraMethod(r=4, alpha=8, target_modules=["query", "value"]),
        hyperparameters=Hyperparameters(
            n_epochs=2,
            batch_size=8,
            validation_split=0.3,
            ewc_lambda=10.0,
            replay_ratio=0.25,
            l1_lambda=1e-4,
            hidden_dropout=0.0,
            early_stopping=EarlyStopping(metric="f1", patience=5),  # LoRA + a higher-is-better metric
        ),
    )
    job = run_job(redis, env, monkeypatch, request)
    assert job["status"] == "succeeded", job
    results = job["results"]
    cm = results["confusion_matrix"]
    assert cm["labels"] == ["cooking", "sports"]
    n_val = job["resolved"]["n_validation"]
    for stage in ("baseline", "final"):
        assert sum(map(sum, cm[stage])) == n_val and len(cm[stage]) == 2
        groups = results["groups"][stage]
        assert set(groups["per_group"]) == {"a", "b"}
        assert sum(g["n"] for g in groups["per_group"].values()) == n_val
        assert 0.0 <= groups["gap"]["accuracy"] <= 1.0
    # the final confusion matrix agrees with the final accuracy
    assert sum(cm["final"][i][i] for i in range(2)) / n_val == pytest.approx(results["final"]["accuracy"])
    f = results["forgetting"]
    assert math.isfinite(f["reference_loss_before"]) and f["increase"] == pytest.approx(
        f["reference_loss_after"] - f["reference_loss_before"], abs=1e-5
    )
    assert results["early_stopping"]["metric"] == "eval_f1" and job["resolved"]["greater_is_better"] is True
    assert results["final"]["f1"] == pytest.approx(results["early_stopping"]["best_metric"])
    assert job["resolved"]["auto_reasons"]["learning_rate"].startswith("0.002: LoRA on classification")
    assert job["resolved"]["n_reference"] == 6 and job["resolved"]["dropout_overrides"]["hidden_dropout_prob"] == 0.0
    n_replayed = job["resolved"]["n_replayed"]
    assert n_replayed == round(0.25 * (job["resolved"]["n_train"] - n_replayed)) > 0
    assert any(f"replay: mixed {n_replayed}" in e["message"] for e in job["events"])


def test_dropout_the_model_lacks_fails_the_job(redis, env, monkeypatch, tiny_causal_lm: Path) -> None:  # type: ignore[no-untyped-def]
    request = JobCreate(
        model=str(tiny_causal_lm),
        training_file=upload_rows(env, qa(8, COLOURS)),
        hyperparameters=Hyperparameters(hidden_dropout=0.2, max_steps=1),
    )
    job = run_job(redis, env, monkeypatch, request)
    assert job["status"] == "failed"
    assert job["error"]["code"] == "invalid_request" and job["error"]["param"] == "hyperparameters.hidden_dropout"
