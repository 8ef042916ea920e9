"""The schedule of a job's training (optimizer steps, logging, evaluation, early stopping) and its resolved record."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from ftjobs.client.models import auto_reasons
from ftjobs.jobs.data.examples import steps_per_epoch
from ftjobs.jobs.training import continuation, distributed, safeguards
from ftjobs.jobs.training.inputs import Inputs
from ftjobs.jobs.training.model import TrainableModel

LOG_POINTS = 50  # train-loss points per run: enough for a curve, few enough for the stream
EVAL_POINTS = 12  # eval_steps null: evaluations per run to aim for (a curve, not one dot an epoch) ...
EVALS_PER_EPOCH = 4  # ... at most this many an epoch; a run of many epochs evaluates once an epoch
EVAL_COST = 1.0  # ... and at most this many per n_train/n_validation: a row evaluated costs up to ~1/2 of one
# trained (LoRA: the frozen base makes the backward cheap; measured with bench/job_overhead.py), so evaluating adds
# at most half the training's compute (a validation set half the training set: 2 an epoch)


@dataclass
class Schedule:
    """How long to train, and how often to log and evaluate."""

    total_steps: int  # optimizer steps
    logging_steps: int
    eval_strategy: str  # "no" (no validation data), "steps" (eval_steps) or "epoch"
    eval_steps: int | None = None  # "steps": evaluate every this many optimizer steps
    stopping: dict[str, Any] = field(default_factory=dict)  # early stopping's TrainingArguments; {}: none


def plan_schedule(inputs: Inputs) -> Schedule:
    """Optimizer steps, logging, evaluation; early stopping keeps the best checkpoint (scratch) to reload."""
    hp, data = inputs.hp, inputs.data
    per_epoch = steps_per_epoch(
        len(data.train), hp.batch_size, hp.gradient_accumulation_steps * distributed.world_size()
    )  # DDP: each optimizer step takes a batch on every rank (nested ceilings: the Trainer's count)
    total_steps = hp.max_steps or hp.n_epochs * per_epoch
    logging_steps = max(1, total_steps // LOG_POINTS)
    n_validation = len(data.validation) if data.validation else 0
    eval_steps = hp.eval_steps or auto_eval_steps(total_steps, per_epoch, len(data.train), n_validation)
    eval_strategy = "no" if data.validation is None else ("steps" if eval_steps else "epoch")
    stopping: dict[str, Any] = {}
    if hp.early_stopping is not None:
        if data.validation is None:
            raise safeguards.InvalidRequest(
                "early_stopping needs validation data, and none was held out (too few rows?)",
                param="hyperparameters.early_stopping",
            )
        stopping = safeguards.early_stopping_args(hp.early_stopping, inputs.request.task)
    every = eval_steps if eval_strategy == "steps" else None
    return Schedule(total_steps, logging_steps, eval_strategy, eval_steps=every, stopping=stopping)


def auto_eval_steps(total_steps: int, per_epoch: int, n_train: int, n_validation: int) -> int | None:
    """eval_steps null: about EVAL_POINTS evaluations a run, at most EVALS_PER_EPOCH an epoch (fewer when the
    validation set is large beside the training set); None: once an epoch."""
    epoch = min(per_epoch, total_steps)  # max_steps may end the run inside its first epoch
    most = min(EVALS_PER_EPOCH, max(1, math.floor(EVAL_COST * n_train / max(1, n_validation))))
    every = max(1, math.ceil(total_steps / EVAL_POINTS), math.ceil(epoch / most))
    return every if every < per_epoch else None


def eval_reason(asked: int | None, schedule: Schedule) -> dict[str, str]:
    """Why eval_steps resolved as it did, when the request left it null."""
    if asked is not None or schedule.eval_strategy == "no":
        return {}
    if schedule.eval_steps is None:
        return {"eval_steps": "null: once an epoch, as a run of many epochs has enough evaluation points"}
    return {
        "eval_steps": f"{schedule.eval_steps}: about {EVAL_POINTS} evaluations a run, at most "
        f"{EVALS_PER_EPOCH} an epoch (fewer beside a large validation set): a validation curve, not one point an epoch"
    }


def resolved_settings(
    inputs: Inputs, built: TrainableModel, schedule: Schedule, report_to: list[str]
) -> dict[str, Any]:
    """The job record's `resolved`: the hyperparameters and everything the worker decided for this run."""
    request, hp, data, reference = inputs.request, inputs.hp, inputs.data, inputs.reference
    bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()  # fp32 weights, bf16 matmuls
    return {
        **hp.model_dump(),
        "model": inputs.model_name,  # relative to its model root, or a packaged model's name: no server path
        "parent_job_id": request.parent_job_id,
        "method": continuation.resolved_method(built.model, request.method),  # e.g. the target modules peft picked
        "total_steps": schedule.total_steps,
        "logging_steps": schedule.logging_steps,
        "eval_strategy": schedule.eval_strategy,
        "eval_steps": schedule.eval_steps,  # as evaluated: null (with validation data) is once an epoch
        "n_train": len(data.train),
        "n_validation": len(data.validation) if data.validation else 0,
        "labels": data.labels,
        "trainable_parameters": built.trainable,
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "precision": "bf16" if bf16 else "fp32",
        "eval_generation_limit": request.eval_generation_limit,
        "eval_samples": request.eval_samples,
        "report_to": report_to,
        "dropout_overrides": built.dropout,
        "metric_for_best_model": schedule.stopping.get("metric_for_best_model"),
        "greater_is_better": schedule.stopping.get("greater_is_better"),
        "auto_reasons": {**auto_reasons(request), **eval_reason(hp.eval_steps, schedule)},
        "n_reference": len(reference.examples) if reference.examples else 0,
        "reference": reference.source if reference.examples else None,
        "n_replayed": reference.replayed,  # reference examples inside n_train
    }
