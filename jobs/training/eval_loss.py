"""eval_loss as the mean loss per target token over the whole evaluation set, however it is batched.

transformers' Trainer reports the mean of its evaluation batches' losses, each batch weighted by its rows. A causal
LM's or a seq2seq model's batch loss is the mean over that batch's target tokens, so the Trainer's figure moves with
the batch size and the number of processes: 6 validation rows as 4 + 2 on two ranks gave 6.33 where one batch of 6
gave 6.50, for the same weights. Here each evaluation batch adds every row's summed token loss and its count of
target tokens (gathered across the ranks, without the rows repeated to even out the last batch), and the
evaluation's `<prefix>_loss` becomes their ratio: the loss per target token of the evaluation set, the same on any
layout. A classification loss is per row already (the Trainer's mean is exact): left as it is.
"""

from __future__ import annotations

from typing import Any

import torch

IGNORE = -100  # labels the loss leaves out (prompt tokens, padding)


class TokenLoss:
    """Collects (summed token loss, target tokens) per row during one evaluation; None outside one."""

    def __init__(self) -> None:
        self.rows: list[torch.Tensor] | None = None

    def start(self) -> None:
        self.rows = []

    def add(self, accelerator: Any, model: Any, outputs: Any, labels: Any) -> None:
        """One evaluation batch, on every rank alike (the gather is a collective)."""
        logits = getattr(outputs, "logits", None) if self.rows is not None else None
        if logits is None or not isinstance(labels, torch.Tensor) or labels.dim() != 2 or logits.dim() != 3:
            self.rows = None  # not a sequence loss (classification): the Trainer's figure stands
            return
        logits = logits[:, -labels.shape[1] :]  # prompt tuning prepends virtual tokens to the logits, not the labels
        config = getattr(accelerator.unwrap_model(model), "config", None)
        if not getattr(config, "is_encoder_decoder", False):  # a decoder predicts the next token
            logits, labels = logits[:, :-1], labels[:, 1:]
        per_token = torch.nn.functional.cross_entropy(
            logits.float().transpose(1, 2), labels, ignore_index=IGNORE, reduction="none"
        )
        kept = labels != IGNORE
        row = torch.stack([(per_token * kept).sum(1), kept.sum(1).to(per_token.dtype)], dim=1)
        self.rows.append(accelerator.gather_for_metrics(row.detach()).cpu())

    def finish(self, metrics: dict[str, Any], prefix: str) -> None:
        """Puts the per-token loss in place of the Trainer's mean of batch means."""
        rows, self.rows = self.rows, None
        key = f"{prefix}_loss"
        if not rows or key not in metrics:
            return
        total = torch.cat(rows).double().sum(0)
        if total[1] > 0:
            metrics[key] = float(total[0] / total[1])
