"""The Trainer wired for one job: schedule, trackers, callbacks (progress, checkpoints, early stopping), penalties."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import EarlyStoppingCallback, PrinterCallback

from ftjobs.client.models import Task
from ftjobs.core.settings import Settings
from ftjobs.core.storage import Storage
from ftjobs.jobs.evaluation.generation import Evaluator
from ftjobs.jobs.evaluation.metrics import PredictionKeeper, classification_compute_metrics
from ftjobs.jobs.evaluation.preference import PreferenceScorer
from ftjobs.jobs.interrupts import INTERRUPTER
from ftjobs.jobs.outputs import trackers
from ftjobs.jobs.outputs.results import Scores
from ftjobs.jobs.report import Reporter
from ftjobs.jobs.sweep_pruning import pruning_callbacks
from ftjobs.jobs.training import checkpoints, debias, distributed, dpo, packing, safeguards
from ftjobs.jobs.training.epoch_weights import EpochWeightsCallback
from ftjobs.jobs.training.inputs import Inputs
from ftjobs.jobs.training.limits import LimitsCallback, check_planned_steps, tenant_limits
from ftjobs.jobs.training.model import TrainableModel
from ftjobs.jobs.training.schedule import Schedule, plan_schedule, resolved_settings
from ftjobs.jobs.training.trainer import JobTrainer, PadCollator, ReportCallback, training_arguments


@dataclass
class Baseline:
    """The model before this attempt trained it: measured at step 0, or restored from a lost attempt's checkpoint."""

    scores: Scores | None = None
    predictions: tuple[list[int], list[int]] | None = None  # (true, predicted) class ids: the bias report's "before"
    resumed: checkpoints.Checkpoint | None = None


@dataclass
class Run:
    """The Trainer wired for one job, and what the evaluation and save phases read besides it."""

    inputs: Inputs
    schedule: Schedule
    trainer: JobTrainer
    callback: ReportCallback  # progress, metric histories, the cancel check
    evaluator: Evaluator  # generation scores and the samples artifact
    keeper: PredictionKeeper | None  # classification: the last evaluation's predictions
    reference_batches: list[dict[str, torch.Tensor]]
    reference_before: float | None  # the reference loss before training (None: no reference data)
    baseline: Baseline = field(default_factory=Baseline)  # filled by evaluate_baseline; checkpoints carry it
    limits: LimitsCallback | None = None  # the tenant's per-job limits; `exceeded` after a run stopped at one
    scorer: Callable[[str], dict[str, float]] | None = None  # task-specific scores of a stage (dpo: preferences)


def build_trainer(
    inputs: Inputs, built: TrainableModel, settings: Settings, store: Storage, reporter: Reporter, work: Path
) -> Run:
    """The schedule, the trackers, the resolved record, then the Trainer with its callbacks and penalties."""
    request, hp, data, tokenizer = inputs.request, inputs.hp, inputs.data, inputs.tokenizer
    causal = request.task in (Task.causal_lm, Task.seq2seq)  # a language-model loss: perplexity
    preference = request.task == Task.dpo  # TRL's DPOTrainer (jobs/training/dpo.py)
    train_set, packed = packing.training_set(inputs, reporter)  # packed rows (hyperparameters.packing) or examples
    schedule = plan_schedule(packing.with_training_set(inputs, train_set))  # steps count what the Trainer batches
    limits = tenant_limits(settings, reporter.tenant)
    check_planned_steps(limits, schedule.total_steps)  # before any tracker or Trainer: nothing to clean up
    report_to = trackers.start(
        request.integrations,
        work / "out",
        work / "trackers",
        job_id=reporter.job_id,
        tenant=reporter.tenant,
        attempt=reporter.attempt,
    )
    resolved = resolved_settings(inputs, built, schedule, report_to)
    resolved["packing_stats"] = packed.as_json() if packed else None
    reporter.resolved(resolved)
    callback = (dpo.DpoReportCallback if preference else ReportCallback)(reporter, settings.heartbeat_s, causal)
    # What the model says (greedy generations scored with BLEU/ROUGE, or predicted labels), not just its loss.
    evaluator = Evaluator(
        request.task,
        tokenizer,
        data.validation_rows,
        limit=request.eval_generation_limit,
        samples=request.eval_samples,
        max_seq_length=hp.max_seq_length,
        labels=data.labels,
        should_stop=lambda: _stop_seen(reporter),
        options=request.eval_generation,
    )
    baseline = Baseline()
    # Resumable checkpoints (jobs/training/checkpoints.py): their callback asks the Trainer to save, then uploads.
    # Scratch keeps the newest save only (+ the best under early stopping, whose saves then need the optimizer too).
    saver = checkpoints.CheckpointCallback(
        store,
        reporter,
        settings.checkpoint_s,
        settings.checkpoint_steps,
        lambda: checkpoints.job_state(callback, baseline.scores, baseline.predictions, evaluator),
    )
    saving = {"save_total_limit": 1, **({"save_only_model": False} if saver.enabled else {})}
    args = training_arguments(
        hp.model_copy(update={"eval_steps": schedule.eval_steps}),  # as resolved (null: the schedule's choice)
        work / "trainer",
        report_to,
        schedule.logging_steps,
        schedule.eval_strategy,
        schedule.stopping,
        saving,
        causal,
    )
    keeper = None
    if request.task == Task.classification:
        keeper = PredictionKeeper(classification_compute_metrics(data.labels or []))
    # callback may veto a save (cancel); the limits after it: the step it stops at is reported first
    guard = LimitsCallback(limits, lambda: callback.earlier_seconds)
    callbacks: list[Any] = [saver, callback, guard]  # the saver also when disabled: a pause still saves
    if not distributed.sharded():  # FSDP ranks hold shards: rank 0 alone cannot save an epoch's weights
        callbacks.append(EpochWeightsCallback(work / "out", request.method, inputs.model_name))  # OpenAI's checkpoints
    if hp.early_stopping is not None:
        callbacks.append(EarlyStoppingCallback(hp.early_stopping.patience, hp.early_stopping.min_delta))
    callbacks.extend(pruning_callbacks(settings, reporter, request))  # a sweep's trial: median pruning
    if preference:
        trainer, reference_batches, reference_before = dpo.build_dpo_trainer(inputs, built, args, callbacks)
        scorer = PreferenceScorer(trainer, reporter, hp.beta)
        return Run(inputs, schedule, trainer, callback, evaluator, keeper, reference_batches, reference_before,
                   baseline, guard, scorer)  # fmt: skip
    trainer = JobTrainer(
        model=built.model,
        args=args,
        train_dataset=train_set,
        eval_dataset=data.validation,
        processing_class=tokenizer,
        data_collator=PadCollator(built.pad_id, 8 if torch.cuda.is_available() else None),
        compute_metrics=keeper,
        callbacks=callbacks,
    )
    trainer.remove_callback(PrinterCallback)  # the callback reports to the job; the worker log stays quiet
    reference_batches, reference_before = safeguards.attach_penalties(
        trainer, hp.l1_lambda, hp.ewc_lambda, inputs.reference.examples
    )
    if inputs.prepared.class_weights and data.labels:
        trainer.class_weights = torch.tensor([inputs.prepared.class_weights.get(name, 1.0) for name in data.labels])
    if request.group_field:  # data.debias: group-balanced or group DRO loss over the training rows' groups
        rows, examples = inputs.prepared.train, data.train.examples
        trainer.group_loss = debias.attach(request.data, request.group_field, rows, examples)
    return Run(
        inputs, schedule, trainer, callback, evaluator, keeper, reference_batches, reference_before, baseline, guard
    )


def _stop_seen(reporter: Reporter) -> bool:
    """The Evaluator's cancel check: it stops by itself, so no interrupt is needed."""
    if reporter.cancel_requested():
        INTERRUPTER.acknowledge()
        return True
    return False
