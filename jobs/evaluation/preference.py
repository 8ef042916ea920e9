"""Preference evaluation (task dpo): per-pair log-probabilities of the model and its reference on the validation pairs.

TRL's evaluation averages its metrics per batch, and before training every implicit reward is 0 by construction
(the model is its own reference), so it cannot say whether the model already preferred the chosen answers. This
pass scores every validation pair with the model and the reference and gives, over pairs: the DPO loss, the implicit
rewards (rewards/chosen, rewards/rejected, rewards/margins, rewards/accuracies) and the model's own preference
(reward_accuracy, reward_margin): the definitions are in jobs/training/dpo.py. Run before training it measures the
reference (the base or the parent job's model), after training the trained model. On several processes (DDP) each
rank scores its share of the pairs and the scores are gathered: every rank gets the metrics of all the pairs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F

from ftjobs.jobs.evaluation.metrics import summary
from ftjobs.jobs.interrupts import Cancelled
from ftjobs.jobs.report import Reporter


@contextlib.contextmanager
def reference_model(trainer: Any) -> Iterator[Any]:
    """The model TRL compares against: its frozen copy (full), the parent's adapter copy, or the adapter disabled."""
    if trainer.ref_model is not None:
        yield trainer.ref_model
        return
    from trl.trainer.utils import use_adapter

    model = trainer.accelerator.unwrap_model(trainer.model)
    with use_adapter(model, "ref" if "ref" in model.peft_config else None):
        yield model


def answer_logps(model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probabilities of the chosen and rejected answers of a DataCollatorForPreference batch (TRL's fused
    LM head, as its loss computes them: the same numbers, without the vocabulary-sized logits)."""
    completion = batch["completion_mask"]
    labels = batch["input_ids"].masked_fill(completion == 0, -100)
    out = model(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels,
        use_cache=False, fused_lm_head=True,
    )  # fmt: skip
    per_token = out.log_probs[:, -(completion.size(1) - 1) :]
    sums = (per_token * completion[:, 1:]).sum(dim=1).float()
    chosen, rejected = sums.chunk(2, dim=0)
    return chosen, rejected


def pair_metrics(
    beta: float, chosen: torch.Tensor, rejected: torch.Tensor, ref_chosen: torch.Tensor, ref_rejected: torch.Tensor
) -> dict[str, float]:
    """The metrics of jobs/training/dpo.py over all pairs (stream names: `loss`, not `eval_loss`)."""
    reward_c, reward_r = beta * (chosen - ref_chosen), beta * (rejected - ref_rejected)
    return {
        "loss": float(-F.logsigmoid(reward_c - reward_r).mean()),
        "rewards/chosen": float(reward_c.mean()),
        "rewards/rejected": float(reward_r.mean()),
        "rewards/margins": float((reward_c - reward_r).mean()),
        "rewards/accuracies": float((reward_c > reward_r).float().mean()),
        "reward_accuracy": float((chosen > rejected).float().mean()),
        "reward_margin": float(beta * (chosen - rejected).mean()),
        "logps/chosen": float(chosen.mean()),
        "logps/rejected": float(rejected.mean()),
    }


class PreferenceScorer:
    """Scores the validation pairs at a stage ("baseline", "final"); also an eval metric point and an event."""

    def __init__(self, trainer: Any, reporter: Reporter, beta: float) -> None:
        self.trainer, self.reporter, self.beta = trainer, reporter, beta

    @torch.no_grad()
    def __call__(self, stage: str) -> dict[str, float]:
        trainer = self.trainer
        if trainer.eval_dataset is None:
            return {}
        model = trainer.model
        was_training = model.training
        model.eval()
        sums: dict[str, list[torch.Tensor]] = {"c": [], "r": [], "rc": [], "rr": []}
        try:
            for batch in trainer.get_eval_dataloader():
                if self.reporter.cancel_requested():
                    raise Cancelled()
                batch = trainer._prepare_inputs(batch)
                chosen, rejected = answer_logps(model, batch)
                with reference_model(trainer) as ref:
                    ref_chosen, ref_rejected = answer_logps(ref, batch)
                # DDP: each rank scored its share of the pairs; every rank takes every rank's (the padding that
                # evens out the last batch left out), so all see the metrics of the whole validation set.
                scored = trainer.accelerator.gather_for_metrics((chosen, rejected, ref_chosen, ref_rejected))
                for key, value in zip(sums, scored, strict=True):
                    sums[key].append(value.cpu())
        finally:
            model.train(was_training)
        if not sums["c"]:
            return {}
        values = pair_metrics(self.beta, *(torch.cat(v) for v in sums.values()))
        step, epoch = trainer.state.global_step, round(trainer.state.epoch or 0.0, 4)
        self.reporter.metric("eval", step, epoch, values)
        shown = ", ".join(f"{k}={values[k]:.4g}" for k in ("loss", "reward_accuracy", "reward_margin"))
        self.reporter.event(f"{stage} preference eval ({len(torch.cat(sums['c']))} pairs): {shown}")
        return summary(values)
