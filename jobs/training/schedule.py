"""The schedule of a job's training (optimizer steps, logging, evaluation, early stopping) and its resolved record."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ftjobs.client.models import auto_reasons
from ftjobs.jobs.data.examples import steps_per_epoch
from ftjobs.jobs.training import continuation, safeguards
from ftjobs.jobs.training.inputs import Inputs
from ftjobs.jobs.training.model import TrainableModel

LOG_POINTS = 50  # train-loss points per run: enough for a curve, few enough for the stream


@dataclass
class Schedule:
    """How long to train, and how often to log and evaluate."""

    total_steps: int  # optimizer steps
    logging_steps: int
    eval_strategy: str  # "no" (no validation data), "steps" (eval_steps) or "epoch"
    stopping: dict[str, Any] = field(default_factory=dict)  # early stopping's TrainingArguments; {}: none


def plan_schedule(inputs: Inputs) -> Schedule:
    """Optimizer steps, logging, evaluation; early stopping keeps the best checkpoint (scratch) to reload."""
    hp, data = inputs.hp, inputs.data
    total_steps = hp.max_steps or hp.n_epochs * steps_per_epoch(
        len(data.train), hp.batch_size, hp.gradient_accumulation_steps
    )
    logging_steps = max(1, total_steps // LOG_POINTS)
    eval_strategy = "no" if data.validation is None else ("steps" if hp.eval_steps else "epoch")
    stopping: dict[str, Any] = {}
    if hp.early_stopping is not None:
        if data.validation is None:
            raise safeguards.InvalidRequest(
                "early_stopping needs validation data, and none was held out (too few rows?)",
                param="hyperparameters.early_stopping",
            )
        stopping = safeguards.early_stopping_args(hp.early_stopping, inputs.request.task)
    return Schedule(total_steps, logging_steps, eval_strategy, stopping)


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
        "auto_reasons": auto_reasons(request),
        "n_reference": len(reference.examples) if reference.examples else 0,
        "reference": reference.source if reference.examples else None,
        "n_replayed": reference.replayed,  # reference examples inside n_train
    }
