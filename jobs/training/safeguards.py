"""Guards, while training, against the usual ways fine-tuning goes wrong: overfitting (L1, dropout, early
stopping) and catastrophic forgetting (EWC, replay, a reference loss before/after). Their diagnosis afterwards
(loss-curve flags, confusion matrices, per-group metrics) is in jobs/evaluation/."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ftjobs.client.models import EarlyStopping, Task
from ftjobs.jobs.errors import JobFailed

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


def replay_mix(train: list[Any], reference: list[Any], ratio: float, seed: int) -> tuple[list[Any], int]:
    """Training examples plus round(ratio * len(train)) reference examples (sampled with repeats if needed)."""
    n = round(ratio * len(train))
    if n == 0 or not reference:
        return train, 0
    rng = random.Random(seed)
    picked = rng.sample(reference, n) if n <= len(reference) else [rng.choice(reference) for _ in range(n)]
    return train + picked, n


# ----------------------------------------------------------------------------- wiring into a run


def reference_examples(
    task: Task, rows: list[Any], tokenizer: Any, max_seq_length: int, labels: list[str] | None, train_on_inputs: bool
) -> list[dict[str, Any]]:
    """reference_file rows tokenized exactly like training rows."""
    from ftjobs.jobs.data.examples import causal_examples, classification_examples, seq2seq_examples

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
