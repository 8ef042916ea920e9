"""Guards against the usual ways fine-tuning goes wrong: overfitting (L1, dropout, early stopping),
catastrophic forgetting (EWC, replay, a reference loss before/after), and their diagnosis afterwards
(loss-curve flags, confusion matrices, per-group metrics)."""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score

from ftjobs.client.models import EarlyStopping, Task
from ftjobs.jobs.errors import JobFailed

OVERFIT_RISE = 0.10  # validation loss 10% above its best, while the train loss kept falling: overfitting
UNDERFIT_DROP = 0.05  # train loss fell by less than 5% over the run: underfitting

# Config attributes that hold dropout probabilities, by what they drop (BERT, Llama/Qwen, GPT-2, T5, ...).
HIDDEN_DROPOUT_KEYS = ("hidden_dropout_prob", "hidden_dropout", "resid_pdrop", "embd_pdrop", "dropout_rate", "dropout")
ATTENTION_DROPOUT_KEYS = ("attention_probs_dropout_prob", "attention_dropout", "attn_pdrop")
LOWER_IS_BETTER = ("loss", "perplexity")


class InvalidRequest(JobFailed):
    """A request field that cannot apply to this model or data (found only once the worker sees them)."""

    code = "invalid_request"


# ----------------------------------------------------------------------------- dropout


def dropout_overrides(config: Any, hidden: float | None, attention: float | None) -> dict[str, float]:
    """The config attributes to set for the requested dropout; a request the model cannot honour fails."""
    out: dict[str, float] = {}
    requested = ((hidden, HIDDEN_DROPOUT_KEYS, "hidden"), (attention, ATTENTION_DROPOUT_KEYS, "attention"))
    for value, keys, name in requested:
        if value is None:
            continue
        present = [k for k in keys if isinstance(getattr(config, k, None), float | int)]
        if not present:
            raise InvalidRequest(
                f"{type(config).__name__} has no {name} dropout setting (looked for {', '.join(keys)})",
                param=f"hyperparameters.{name}_dropout",
            )
        out.update({k: float(value) for k in present})
    return out


# ----------------------------------------------------------------------------- early stopping


def early_stopping_args(es: EarlyStopping, task: Task) -> dict[str, Any]:
    """TrainingArguments for early stopping on `es.metric` (Trainer names: eval_loss, eval_f1 ...)."""
    name = es.metric.removeprefix("eval_")
    if name == "perplexity":
        name = "loss"  # exp(loss) is monotonic in the loss; the Trainer records only the loss
    allowed = {"loss"} if task != Task.classification else {"loss", "accuracy", "f1", "precision", "recall"}
    if name not in allowed and not (task == Task.classification and name.split("/")[0] in allowed):
        raise InvalidRequest(
            f"early_stopping.metric {es.metric!r} is not recorded for task {task.value}; "
            f"use one of: {', '.join(sorted(allowed))}",
            param="hyperparameters.early_stopping.metric",
        )
    return {
        "metric_for_best_model": f"eval_{name}",
        "greater_is_better": name not in LOWER_IS_BETTER,
        "load_best_model_at_end": True,
        "save_total_limit": 1,  # the best checkpoint (and the latest) only: scratch space stays small
        "save_only_model": True,  # no optimizer state: we never resume from these
    }


# ----------------------------------------------------------------------------- penalties (L1, EWC)


class L1Penalty:
    """lambda * sum |w| over the trainable parameters."""

    def __init__(self, lam: float) -> None:
        self.lam = lam

    def __call__(self, model: torch.nn.Module) -> torch.Tensor:
        params = [p for p in model.parameters() if p.requires_grad]
        return self.lam * torch.stack([p.abs().sum() for p in params]).sum()


class EWCPenalty:
    """Elastic weight consolidation: lambda/2 * sum F_i (w_i - w*_i)^2 over the trainable parameters."""

    def __init__(self, lam: float, fisher: dict[str, torch.Tensor], anchor: dict[str, torch.Tensor]) -> None:
        self.lam, self.fisher, self.anchor = lam, fisher, anchor

    def __call__(self, model: torch.nn.Module) -> torch.Tensor:
        terms = [
            (self.fisher[n] * (p - self.anchor[n]).pow(2)).sum()
            for n, p in model.named_parameters()
            if n in self.fisher
        ]
        return self.lam / 2 * torch.stack(terms).sum()


def fisher_diagonal(
    model: torch.nn.Module, batches: Sequence[dict[str, torch.Tensor]]
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Empirical Fisher diagonal (squared batch gradients, mean 1) of the trainable parameters, and their values."""
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    fisher = {n: torch.zeros_like(p) for n, p in params.items()}
    was_training = model.training
    model.eval()  # no dropout: the Fisher of the model as it is
    for batch in batches:
        model.zero_grad(set_to_none=True)
        model(**batch).loss.backward()
        for n, p in params.items():
            if p.grad is not None:
                fisher[n] += p.grad.detach().pow(2) / len(batches)
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    # Normalised to mean 1: a model that already fits the reference data has a vanishing empirical Fisher,
    # and ewc_lambda should not need rescaling with the loss; what matters is which weights matter more.
    mean = sum(float(f.sum()) for f in fisher.values()) / max(sum(f.numel() for f in fisher.values()), 1)
    if mean > 0:
        fisher = {n: f / mean for n, f in fisher.items()}
    anchor = {n: p.detach().clone() for n, p in params.items()}
    return fisher, anchor


def batches(examples: Sequence[dict[str, Any]], collate: Callable, batch_size: int, device: Any) -> list[dict]:
    """Collated batches on `device`, in order."""
    out = []
    for i in range(0, len(examples), batch_size):
        out.append({k: v.to(device) for k, v in collate(list(examples[i : i + batch_size])).items()})
    return out


@torch.no_grad()
def mean_loss(model: torch.nn.Module, data: Sequence[dict[str, torch.Tensor]]) -> float:
    """Mean loss of `model` over collated batches (eval mode)."""
    was_training = model.training
    model.eval()
    losses = [float(model(**b).loss) for b in data]
    model.train(was_training)
    return sum(losses) / max(len(losses), 1)


def forgetting(before: float, after: float) -> dict[str, float]:
    return {
        "reference_loss_before": round(before, 6),
        "reference_loss_after": round(after, 6),
        "increase": round(after - before, 6),
    }


def replay_mix(train: list[Any], reference: list[Any], ratio: float, seed: int) -> tuple[list[Any], int]:
    """Training examples plus round(ratio * len(train)) reference examples (sampled with repeats if needed)."""
    n = round(ratio * len(train))
    if n == 0 or not reference:
        return train, 0
    rng = random.Random(seed)
    picked = rng.sample(reference, n) if n <= len(reference) else [rng.choice(reference) for _ in range(n)]
    return train + picked, n


# ----------------------------------------------------------------------------- diagnostics


def diagnose(
    train_history: list[dict[str, Any]], eval_history: list[dict[str, Any]], kept_step: int | None = None
) -> list[dict[str, Any]]:
    """Flags on the loss curves of the run: overfitting (validation loss rose from its best while the train
    loss fell) and underfitting (the train loss barely moved); `kept_step`: early stopping kept that step."""
    flags: list[dict[str, Any]] = []
    train = [(h["step"], h["values"]["loss"]) for h in train_history if "loss" in h["values"]]
    evals = [(h["step"], h["values"]["loss"]) for h in eval_history if "loss" in h["values"]]
    if len(train) >= 2:
        first, last = train[0][1], train[-1][1]
        drop = (first - last) / first if first > 0 else 0.0
        if drop < UNDERFIT_DROP:
            flags.append(
                {
                    "flag": "underfitting",
                    "message": (
                        f"The training loss barely moved ({first:.4g} -> {last:.4g}, {100 * drop:.1f}% lower): "
                        "the model is not learning the data. Try a higher learning rate, more epochs, or a larger "
                        "LoRA rank; check that the labels carry a learnable signal."
                        if drop >= 0
                        else f"The training loss rose ({first:.4g} -> {last:.4g}, {-100 * drop:.1f}% higher): the "
                        "model is not learning the data. With only a few steps this may be noise; otherwise try a "
                        "lower learning rate, and check that the labels carry a learnable signal."
                    ),
                    "numbers": {"train_loss_first": first, "train_loss_last": last, "relative_drop": round(drop, 4)},
                }
            )
    if len(evals) >= 2 and train:
        best_i = min(range(len(evals)), key=lambda i: evals[i][1])
        best_step, best = evals[best_i]
        last_step, last = evals[-1]
        rise = (last - best) / best if best > 0 else 0.0
        at_best = [loss for step, loss in train if step <= best_step] or [train[0][1]]
        train_fell = train[-1][1] < at_best[-1]
        if best_i < len(evals) - 1 and rise > OVERFIT_RISE and train_fell:
            flags.append(
                {
                    "flag": "overfitting",
                    "message": f"The validation loss rose {100 * rise:.0f}% from its best ({best:.4g} at step "
                    f"{best_step}) to {last:.4g} while the training loss kept falling: the model is memorising "
                    "the training data. "
                    + (
                        f"Early stopping kept the weights of step {kept_step}."
                        if kept_step is not None
                        else "Use early_stopping, fewer epochs, more data, weight_decay or dropout."
                    ),
                    "numbers": {
                        "best_eval_loss": best,
                        "best_step": best_step,
                        "last_eval_loss": last,
                        "relative_rise": round(rise, 4),
                        "train_loss_at_best": at_best[-1],
                        "train_loss_last": train[-1][1],
                    },
                }
            )
    return flags


# ----------------------------------------------------------------------------- bias amplification


def confusion(y_true: Sequence[int], y_pred: Sequence[int], n_labels: int) -> list[list[int]]:
    """Rows: the true class, columns: the predicted one (label order)."""
    return confusion_matrix(y_true, y_pred, labels=list(range(n_labels))).tolist()


def group_metrics(y_true: Sequence[int], y_pred: Sequence[int], groups: Sequence[str], n_labels: int) -> dict[str, Any]:
    """Accuracy and macro F1 per group, and the gap between the best and the worst group."""
    per: dict[str, dict[str, float]] = {}
    yt, yp = np.asarray(y_true), np.asarray(y_pred)
    for g in sorted(set(groups)):
        idx = np.asarray([i for i, x in enumerate(groups) if x == g])
        per[g] = {
            "n": int(len(idx)),
            "accuracy": float(accuracy_score(yt[idx], yp[idx])),
            # macro over the classes this group has (true or predicted): a class it lacks is not a zero
            "f1": float(f1_score(yt[idx], yp[idx], labels=sorted(set(yt[idx]) | set(yp[idx])), average="macro")),
        }
    gap = {
        m: (max(v[m] for v in per.values()) - min(v[m] for v in per.values())) if per else math.nan
        for m in ("accuracy", "f1")
    }
    return {"per_group": per, "gap": gap}


class PredictionKeeper:
    """Wraps a classification `compute_metrics` and keeps the last evaluation's (true, predicted) class ids."""

    def __init__(self, compute: Callable[[Any], dict[str, float]]) -> None:
        self.compute = compute
        self.last: tuple[list[int], list[int]] | None = None

    def __call__(self, prediction: Any) -> dict[str, float]:
        logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
        self.last = (np.asarray(prediction.label_ids).tolist(), np.argmax(logits, axis=-1).tolist())
        return self.compute(prediction)


def row_groups(rows: Sequence[Any], field: str) -> list[str]:
    """The group of each row (`Row.data[field]`), as text; a row without one is in group `(missing)`."""
    return [str(r.data.get(field)) if r.data.get(field) is not None else "(missing)" for r in rows]


# ----------------------------------------------------------------------------- wiring into a run


def reference_examples(
    task: Task, rows: list[Any], tokenizer: Any, max_seq_length: int, labels: list[str] | None, train_on_inputs: bool
) -> list[dict[str, Any]]:
    """reference_file rows tokenized exactly like training rows."""
    from ftjobs.jobs.data import causal_examples, classification_examples, seq2seq_examples

    if task == Task.classification:
        assert labels is not None
        return classification_examples(rows, tokenizer, max_seq_length, {n: i for i, n in enumerate(labels)})
    if task == Task.seq2seq:
        return seq2seq_examples(rows, tokenizer, max_seq_length)
    return causal_examples(rows, tokenizer, max_seq_length, train_on_inputs)[0]


def attach_penalties(
    trainer: Any, l1_lambda: float, ewc_lambda: float, reference: list[dict[str, Any]] | None
) -> tuple[list[dict[str, torch.Tensor]], float | None]:
    """Adds the L1 and EWC penalties to a JobTrainer; returns the reference batches and their loss before training."""
    if l1_lambda > 0:
        trainer.penalties.append(L1Penalty(l1_lambda))
    if not reference:
        return [], None
    ref = batches(reference, trainer.data_collator, trainer.args.per_device_eval_batch_size, trainer.args.device)
    before = mean_loss(trainer.model, ref)
    if ewc_lambda > 0:
        fisher, anchor = fisher_diagonal(trainer.model, ref)
        trainer.penalties.append(EWCPenalty(ewc_lambda, fisher, anchor))
    return ref, before
