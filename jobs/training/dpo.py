"""Task dpo: preference fine-tuning with TRL's DPOTrainer, wired like the other tasks' Trainer (jobs/training/run.py).

Metric names, in the job's metric stream (split "train" and "eval", with step numbers) and in results.baseline /
results.final (where `loss` is `eval_loss`). pi is the model being trained, pi_ref the reference (the model the job
started from: the base, or the parent job's weights), x the prompt, y_c / y_r the chosen / rejected answer, log pi(y|x)
the summed log-probability of the answer's tokens:

    loss                DPO loss: mean -log sigmoid(rewards/chosen - rewards/rejected); ln 2 = 0.693 before training
    rewards/chosen      mean beta * (log pi(y_c|x) - log pi_ref(y_c|x)): the implicit reward of the chosen answers
    rewards/rejected    the same for the rejected answers
    rewards/margins     mean rewards/chosen - rewards/rejected
    rewards/accuracies  share of pairs with rewards/chosen > rewards/rejected (0 before training: every pair ties)
    reward_accuracy     (eval) share of pairs where the model itself prefers the chosen answer:
                        log pi(y_c|x) > log pi(y_r|x); before training, the share the reference already prefers
    reward_margin       (eval) mean beta * (log pi(y_c|x) - log pi(y_r|x)); after training it is the reference's
                        reward_margin plus rewards/margins
    logps/chosen        mean log pi(y_c|x); logps/rejected: mean log pi(y_r|x)

The stream also carries TRL's own per-batch extras (entropy, logits/chosen, logits/rejected, mean_token_accuracy,
num_tokens). reward_accuracy, reward_margin and the exact per-pair means come from jobs/evaluation/preference.py.

The reference: LoRA keeps no second model. A fresh adapter's reference is the frozen base with the adapter disabled;
a job continuing a LoRA parent trains the parent's adapter and keeps a frozen copy of it as the reference (TRL's
"ref" adapter: adapter-sized, dropped before the weights are saved). Full fine-tuning needs a frozen copy of the model.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import torch
from transformers import PrinterCallback, TrainingArguments

from ftjobs.jobs.data.examples import ExampleDataset
from ftjobs.jobs.training import methods, safeguards
from ftjobs.jobs.training.inputs import Inputs
from ftjobs.jobs.training.model import TrainableModel
from ftjobs.jobs.training.trainer import PadCollator, ReportCallback, ddp_after_evaluation

# Train-split metrics reported besides loss, learning_rate and grad_norm (TRL logs them per logging step).
TRAIN_METRICS = ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies")
REFERENCE_ADAPTER = "ref"  # TRL's name for the frozen copy of a pretrained adapter


def _trl() -> Any:
    """TRL, imported when a dpo job runs (it pulls in `datasets`): other jobs never pay for it."""
    import trl

    return trl


class DpoReportCallback(ReportCallback):
    """The job's ReportCallback, with DPO's rewards in the train-split metric points."""

    train_keys = (*ReportCallback.train_keys, *TRAIN_METRICS)


def dpo_config(args: TrainingArguments, beta: float, max_length: int) -> Any:
    """The job's TrainingArguments as a DPOConfig, with beta and the sequence limit (prompt + answer)."""
    names = {f.name for f in dataclasses.fields(TrainingArguments) if f.init}
    values = {k: v for k, v in args.to_dict().items() if k in names}
    values["prediction_loss_only"] = True  # the evaluation needs the loss and TRL's metrics, never the logits
    return _trl().DPOConfig(**values, beta=beta, max_length=max_length)


def _trainer_class() -> type:
    class DpoJobTrainer(_trl().DPOTrainer):  # type: ignore[misc]
        """TRL's DPOTrainer plus the job-level penalties (L1, EWC) and peft's base-folder swap when saving."""

        penalties: list[Any]

        def train(self, *args: Any, **kw: Any) -> Any:
            ddp_after_evaluation(self)  # the baseline evaluation must not keep DDP from wrapping the model
            return super().train(*args, **kw)

        def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
            with methods.base_folder(self.model):  # peft's save checks read the base model's folder
                super()._save(output_dir, state_dict)

        def compute_loss(self, model: Any, inputs: Any, return_outputs: bool = False, **kw: Any) -> Any:
            result = super().compute_loss(model, inputs, return_outputs=return_outputs, **kw)
            if not self.penalties or not model.training:  # evaluation losses stay comparable with and without
                return result
            loss, outputs = result if return_outputs else (result, None)
            loss = loss + sum(penalty(model) for penalty in self.penalties)
            return (loss, outputs) if return_outputs else loss

    return DpoJobTrainer


def pairs_dataset(examples: ExampleDataset) -> Any:
    """The examples' pairs as the `datasets.Dataset` TRL tokenizes (the token-count `input_ids` left out)."""
    from datasets import Dataset

    return Dataset.from_list([{k: e[k] for k in ("prompt", "chosen", "rejected")} for e in examples.examples])


def build_dpo_trainer(
    inputs: Inputs, built: TrainableModel, args: TrainingArguments, callbacks: list[Any]
) -> tuple[Any, list[dict[str, torch.Tensor]], float | None]:
    """The DPOTrainer for a job, its reference set up as the module says; returns (trainer, reference batches for
    forgetting, their loss before training)."""
    hp, data, model = inputs.hp, inputs.data, built.model
    peft = hasattr(model, "peft_config")
    # Full fine-tuning: a frozen copy (TRL would load one by the config's name, which is the tenant's, not a folder).
    ref_model = None if peft else copy.deepcopy(model).eval().requires_grad_(False)
    trainer = _trainer_class()(
        model=model,
        ref_model=ref_model,
        args=dpo_config(args, hp.beta, hp.max_seq_length),
        train_dataset=pairs_dataset(data.train),
        eval_dataset=pairs_dataset(data.validation) if data.validation is not None else None,
        processing_class=inputs.tokenizer,
        callbacks=callbacks,
    )
    trainer.remove_callback(PrinterCallback)  # the callback reports to the job; the worker log stays quiet
    trainer.penalties = []
    if peft and inputs.parent is None and REFERENCE_ADAPTER in model.peft_config:
        # TRL copied the fresh adapter as the reference; a fresh LoRA adds nothing (B = 0): the base is the reference.
        model.delete_adapter(REFERENCE_ADAPTER)
    return (trainer, *_penalties(trainer, inputs, built))


def _penalties(
    trainer: Any, inputs: Inputs, built: TrainableModel
) -> tuple[list[dict[str, torch.Tensor]], float | None]:
    """L1 and EWC as for the other tasks; the reference rows (reference_file or the parent's SFT data) are language
    modelling rows, measured with their own loss: forgetting."""
    hp, reference = inputs.hp, inputs.reference.examples
    if hp.l1_lambda > 0:
        trainer.penalties.append(safeguards.L1Penalty(hp.l1_lambda))
    if not reference:
        return [], None
    collate = PadCollator(built.pad_id)
    ref = safeguards.batches(reference, collate, trainer.args.per_device_eval_batch_size, trainer.args.device)
    before = safeguards.mean_loss(trainer.model, ref)
    if hp.ewc_lambda > 0:
        fisher, anchor = safeguards.fisher_diagonal(trainer.model, ref)
        trainer.penalties.append(safeguards.EWCPenalty(hp.ewc_lambda, fisher, anchor))
    return ref, before


def drop_reference(model: Any) -> None:
    """Before saving: the parent's frozen adapter copy is not part of the result."""
    if REFERENCE_ADAPTER in (getattr(model, "peft_config", None) or {}):
        model.delete_adapter(REFERENCE_ADAPTER)
