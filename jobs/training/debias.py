"""Debiasing across the groups of `group_field` (classification): group-balanced loss weights, or group DRO.

`data.debias` picks the loss the Trainer minimises (jobs/training/trainer.py calls a `GroupLoss` with each
batch's per-example cross-entropies and their group ids; evaluation losses stay plain):

- group_balance: each example's loss times n / (G * n_g), its group's inverse frequency in the training split
  (mean weight 1 over the split): every group counts as much as a group of average size.
- group_dro: Sagawa et al. 2020 ("Distributionally Robust Neural Networks", Algorithm 1): online weights q over
  the groups, q_g <- q_g * exp(step * loss_g) after each batch (renormalised; kept in log space), and the loss
  sum_g q_g * loss_g: the worst group's loss dominates. q starts uniform on every attempt (not checkpointed).

Groups are the training rows' `group_field` values as text (jobs/evaluation/bias.py row_groups: a row without one
is in `(missing)`); for the spurious-correlation setting of the paper, put the (attribute, label) pair in the field.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import torch

from ftjobs.client.models import DataOptions
from ftjobs.jobs.data.read import Row
from ftjobs.jobs.evaluation.bias import row_groups

GROUP_KEY = "group_ids"  # the training examples' extra field: the collator batches it, compute_loss pops it


class GroupLoss:
    """Per-example losses of a batch -> one loss, weighted by group (balance) or by online group weights (DRO)."""

    def __init__(self, method: str, names: list[str], counts: list[int], step_size: float) -> None:
        self.method = method
        self.names = names
        self.counts = counts
        n, g = sum(counts), len(counts)
        self.weights = torch.tensor([n / (g * c) for c in counts])  # group_balance: inverse group frequency
        self.step_size = step_size
        self.log_q = torch.full((g,), -torch.log(torch.tensor(float(g))).item())  # group_dro: log of uniform q
        self.steps = 0

    def __call__(self, per_example: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
        groups = groups.to(per_example.device)
        if self.method == "group_balance":
            return (per_example * self.weights.to(per_example)[groups]).mean()
        one_hot = torch.nn.functional.one_hot(groups, len(self.names)).to(per_example.dtype)  # [batch, groups]
        group_loss = (one_hot * per_example[:, None]).sum(0) / one_hot.sum(0).clamp(min=1)  # absent groups: 0
        with torch.no_grad():  # exponentiated gradient ascent on q (log space: no overflow at large losses)
            log_q = self.log_q.to(per_example) + self.step_size * group_loss.detach()
            self.log_q = log_q - torch.logsumexp(log_q, 0)
        self.steps += 1
        return (self.log_q.exp() * group_loss).sum()

    def report(self) -> dict[str, Any]:
        """What results.groups.debias says: the method, the training split's groups and their weights."""
        out: dict[str, Any] = {
            "method": self.method,
            "train_counts": dict(zip(self.names, self.counts, strict=True)),
        }
        if self.method == "group_balance":
            out["weights"] = {n: round(float(w), 6) for n, w in zip(self.names, self.weights, strict=True)}
        else:
            out["step_size"] = self.step_size
            out["final_weights"] = {n: round(float(q), 6) for n, q in zip(self.names, self.log_q.exp(), strict=True)}
        return out


def attach(
    options: DataOptions, group_field: str, rows: Sequence[Row], examples: list[dict[str, Any]]
) -> GroupLoss | None:
    """Tag each training example with its row's group id (rows and examples in the same order) and return the
    loss for `options.debias`; None when it is "none"."""
    if options.debias == "none":
        return None
    groups = row_groups(rows, group_field)
    if len(groups) != len(examples):  # one example per row: classification never drops or adds one
        raise RuntimeError(f"debias: {len(examples)} training examples for {len(groups)} rows")
    names = sorted(set(groups))
    index = {name: i for i, name in enumerate(names)}
    for example, group in zip(examples, groups, strict=True):
        example[GROUP_KEY] = index[group]
    counts = Counter(groups)
    return GroupLoss(options.debias, names, [counts[n] for n in names], options.group_dro_step_size)
