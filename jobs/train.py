"""One attempt of one fine-tuning job, top to bottom: the function RQ runs in its forked work horse.

    run(payload) -> claim the job (queued -> running) -> resolve the base model -> fetch the data
    -> tokenizer + datasets -> model + method -> baseline evaluation -> train -> final evaluation
    -> artifacts -> succeeded (or failed / cancelled, with a JobError naming what went wrong).

Everything the user sees goes through `jobs.report.Reporter`. A job failure never raises out of `run`
(RQ records the RQ job as finished; the ftjobs record holds the failure); tracebacks go to the worker's
stderr only, never into the record or its events.
"""

from __future__ import annotations

import logging
import os
import socket
import tempfile
import time
import traceback
import warnings
from pathlib import Path
from typing import Any

import torch
from redis import Redis
from rq import get_current_job
from rq.timeouts import JobTimeoutException
from transformers import (
    AutoConfig,
    AutoTokenizer,
    EarlyStoppingCallback,
    PrinterCallback,
    set_seed,
)
from transformers.utils import logging as hf_logging

from ftjobs.client.models import (
    Artifact,
    EventLevel,
    JobCreate,
    JobError,
    JobStatus,
    QueuePayload,
    Task,
    auto_reasons,
)
from ftjobs.core.keys import JobField, job_record_path
from ftjobs.jobs import checkpoints, continuation, integrations, outcome, safeguards
from ftjobs.jobs.data import Datasets, build_datasets, steps_per_epoch
from ftjobs.jobs.errors import JobFailed
from ftjobs.jobs.evaluate import classification_compute_metrics, summary
from ftjobs.jobs.generation import Evaluator
from ftjobs.jobs.inputs import fetch_rows, hyperparameters, load, load_model, resolve_model_path, short
from ftjobs.jobs.interrupts import INTERRUPTER, Cancelled, Preempted
from ftjobs.jobs.methods import apply_method, load_options, parameter_counts
from ftjobs.jobs.prepare import MODEL_AUGMENT, prepare_data, step_messages, token_report, write_report
from ftjobs.jobs.report import Heartbeat, Reporter
from ftjobs.jobs.storage import Store, remove_checkpoints
from ftjobs.jobs.trainer import JobTrainer, PadCollator, ReportCallback, training_arguments
from ftjobs.jobs.worker import WorkerSettings, connect

log = logging.getLogger("ftjobs.train")
LOG_POINTS = 50  # train-loss points per run: enough for a curve, few enough for the stream
CANCEL_GRACE_S = 3.0  # seconds a step may run on after a cancel was seen before it is interrupted


def run(payload: dict[str, Any]) -> dict[str, Any]:
    """RQ job function: one attempt of one job; returns a small summary, never raises for a job failure."""
    p = QueuePayload.model_validate(payload)
    settings = WorkerSettings.from_env()
    redis = connect(settings.redis_url)
    try:
        return _attempt(p, settings, redis)
    finally:
        INTERRUPTER.disarm()
        redis.close()


def _attempt(p: QueuePayload, settings: WorkerSettings, redis: Redis) -> dict[str, Any]:
    summary: dict[str, Any] = {"job_id": p.job_id, "tenant": p.tenant, "attempt": p.attempt}
    reporter = Reporter(redis, p.tenant, p.job_id, p.attempt)
    record = reporter.read()
    if record is None:
        return {**summary, "status": "missing"}
    rq_job = get_current_job()
    worker_name = (rq_job.worker_name if rq_job else None) or f"{socket.gethostname()}.{os.getpid()}"
    store = Store(settings.storage_url)
    if not reporter.start(worker_name, queue=rq_job.origin if rq_job else None):
        if JobStatus((reporter.read() or {}).get(JobField.status, JobStatus.queued)).is_terminal:
            remove_checkpoints(store, p.tenant, p.job_id)  # cancelled while a lost attempt's requeue waited
        return {**summary, "status": "skipped"}  # cancelled while queued, or a newer attempt owns the job

    status, error, outputs = JobStatus.failed, None, None
    results: dict[str, Any] = {}
    # A cancel noticed by the heartbeat thread stops a step that takes minutes within seconds (jobs/interrupts.py).
    stop = Heartbeat(reporter, settings.heartbeat_s, on_stop=lambda: INTERRUPTER.request(Cancelled, CANCEL_GRACE_S))
    with stop, tempfile.TemporaryDirectory(prefix="ftjobs-") as tmp:
        try:
            status, results, outputs = train_job(record, settings, store, reporter, Path(tmp))
        except Cancelled:
            status = JobStatus.cancelled
        except Preempted:  # the worker is stopping: it requeues the job, which resumes from its checkpoint
            integrations.end(JobStatus.cancelled)
            return {**summary, "status": "preempted"}
        except JobFailed as e:
            error = e.to_error()
        except (torch.OutOfMemoryError, MemoryError) as e:
            advice = "try a smaller batch_size or max_seq_length, or LoRA"
            error = JobError(code="out_of_memory", message=f"{type(e).__name__}: {short(e)}; {advice}")
        except JobTimeoutException as e:  # RQ's limit for one attempt (FTJOBS_JOB_TIMEOUT_S)
            error = JobError(code="timeout", message=short(e))
        # Our fault or the environment's: the record gets one line, the worker's stderr the traceback.
        except Exception as e:
            traceback.print_exc()
            error = JobError(code="internal_error", message=f"{type(e).__name__}: {short(e)}")
        integrations.end(status)  # W&B/MLflow runs a failure or a cancel left open (a no-op after finish)
    INTERRUPTER.disarm()  # from here on only our own guarded writes: nothing may interrupt them
    if error is not None:
        status = JobStatus.failed
    if reporter.finish(status, error=error, results=results, artifacts=outputs):
        _save_record(store, reporter)
        remove_checkpoints(store, p.tenant, p.job_id)  # finished: its checkpoints are of no further use
    return {**summary, "status": status.value, "error": error.code if error else None}


def train_job(
    record: dict[str, Any], settings: WorkerSettings, store: Store, reporter: Reporter, work: Path
) -> tuple[JobStatus, dict[str, Any], list[Artifact] | None]:
    """The story of one job; returns (status, results, artifacts)."""
    request = JobCreate.model_validate(record["request"])
    tenant, job_id = record["tenant"], record["id"]
    hp = hyperparameters(request, record.get("resolved") or {})
    causal = request.task != Task.classification  # a language-model loss (causal_lm, seq2seq): perplexity
    integrations.check(request.integrations)  # before any work: a missing tracker fails fast
    hf_logging.disable_progress_bar()  # progress goes to the job record, not to tqdm bars in the worker log
    # peft still calls this transformers 5 deprecation on every model it wraps: noise in the worker log.
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)

    # 1. The base model: a local folder under a configured root (no hub here).
    model_path = resolve_model_path(request.model, settings.model_roots)
    parent = None
    if request.parent_job_id:  # continue from a finished job's weights (jobs/continuation.py)
        parent = continuation.fetch_parent(store, tenant, request, work)
        reporter.event(f"continuing from {parent.job_id}")

    # 2. Data: fetch the uploaded files from the store, validate, split, tokenize.
    train_rows = fetch_rows(store, tenant, request.training_file, "training_file", work)
    validation_rows = (
        fetch_rows(store, tenant, request.validation_file, "validation_file", work) if request.validation_file else None
    )
    # Clean, dedup, split, augment and balance as `request.data` asks (nothing, by default); reported step by step.
    prepared = prepare_data(
        request.task, request.data, train_rows, validation_rows, hp.validation_split, hp.seed, settings.model_roots
    )
    train_rows, validation_rows = prepared.train, prepared.validation
    # The job's validation (jobs/validate.py) reported the steps, notes and token checks; only what it left to
    # this run (model-based augmentation and the steps after it) is news here.
    messages = step_messages(prepared.report)
    first_new = next((i for i, (_, step) in enumerate(messages) if step["step"] in MODEL_AUGMENT), len(messages))
    for message, step in messages[first_new:]:
        reporter.event(message, data=step)
    tokenizer = load(AutoTokenizer.from_pretrained, model_path)
    if parent and parent.labels is not None:
        continuation.check_labels(parent, train_rows + (validation_rows or []))
    data: Datasets = build_datasets(
        request.task,
        tokenizer,
        train_rows,
        validation_rows,
        hp.max_seq_length,
        hp.validation_split,
        hp.seed,
        train_on_inputs=hp.train_on_inputs,
        labels=parent.labels if parent else None,
    )
    tokens = token_report(data.train.examples, hp.max_seq_length)
    if prepared.report:
        prepared.report["tokens"] = tokens
        write_report(work / "out", prepared)  # data_report.json (+ the split): picked up with the other artifacts
    # What the model must not forget: measured before/after, optionally replayed and anchored with EWC.
    # A continued job's reference is, unless given, what its parent trained on.
    reference, replayed, source = None, 0, "reference_file"
    reference_rows = None
    if request.reference_file:
        reference_rows = fetch_rows(store, tenant, request.reference_file, "reference_file", work)
    elif parent is not None:
        reference_rows = continuation.parent_rows(store, tenant, parent, hp, work)
        source = f"parent {parent.job_id}'s training data"
    if reference_rows:
        reference = safeguards.reference_examples(
            request.task, reference_rows, tokenizer, hp.max_seq_length, data.labels, hp.train_on_inputs
        )
        if hp.replay_ratio > 0:
            data.train.examples, replayed = safeguards.replay_mix(
                data.train.examples, reference, hp.replay_ratio, hp.seed
            )
            reporter.event(f"replay: mixed {replayed} examples of the {source} into the training data")
        reporter.event(f"forgetting: measured on {len(reference)} examples of the {source}")
    n_val = len(data.validation) if data.validation else 0
    reporter.event(
        f"data: {len(data.train)} training and {n_val} validation examples, "
        f"{data.train.num_tokens()} training tokens per epoch"
    )

    # 3. Model + method. The seed fixes the fresh weights (classifier head, LoRA A matrices).
    set_seed(hp.seed)
    dropout = safeguards.dropout_overrides(
        load(AutoConfig.from_pretrained, model_path), hp.hidden_dropout, hp.attention_dropout
    )
    full_parent = parent is not None and request.method.type == "full"  # full: the parent's model/ is the start
    model = load_model(
        parent.weights if parent and full_parent else model_path,
        request.task,
        data.labels,
        **dropout,
        **load_options(request.method, request.task),
    )
    if tokenizer.pad_token_id is None:  # decoder tokenizers often lack one; padding is masked anyway
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    model.config.pad_token_id = pad_id
    if parent and not full_parent:
        model = continuation.attach(model, request.method, parent)
    else:
        model = apply_method(model, request.method, request.task)
    trainable, total = parameter_counts(model)
    reporter.event(
        f"{request.method.type}: training {trainable:,} of {total:,} parameters "
        f"({100 * trainable / max(total, 1):.2f}%)"
    )

    # 4. The schedule: optimizer steps, how often to log and evaluate.
    total_steps = hp.max_steps or hp.n_epochs * steps_per_epoch(
        len(data.train), hp.batch_size, hp.gradient_accumulation_steps
    )
    logging_steps = max(1, total_steps // LOG_POINTS)
    eval_strategy = "no" if data.validation is None else ("steps" if hp.eval_steps else "epoch")
    bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()  # fp32 weights, bf16 matmuls
    stopping: dict[str, Any] = {}  # early stopping: keep the best checkpoint (scratch) and reload it at the end
    if hp.early_stopping is not None:
        if data.validation is None:
            raise safeguards.InvalidRequest(
                "early_stopping needs validation data, and none was held out (too few rows?)",
                param="hyperparameters.early_stopping",
            )
        stopping = safeguards.early_stopping_args(hp.early_stopping, request.task)
    report_to = integrations.start(
        request.integrations, work / "out", work / "trackers", job_id=job_id, tenant=tenant, attempt=reporter.attempt
    )
    reporter.resolved(
        {
            **hp.model_dump(),
            "model": request.model,
            "model_path": str(model_path),
            "parent_job_id": request.parent_job_id,
            "method": continuation.resolved_method(model, request.method),  # e.g. the target modules peft picked
            "total_steps": total_steps,
            "logging_steps": logging_steps,
            "eval_strategy": eval_strategy,
            "n_train": len(data.train),
            "n_validation": n_val,
            "labels": data.labels,
            "trainable_parameters": trainable,
            "device": "cuda" if torch.cuda.is_available() else "cpu",
            "precision": "bf16" if bf16 else "fp32",
            "eval_generation_limit": request.eval_generation_limit,
            "eval_samples": request.eval_samples,
            "report_to": report_to,
            "dropout_overrides": dropout,
            "metric_for_best_model": stopping.get("metric_for_best_model"),
            "greater_is_better": stopping.get("greater_is_better"),
            "auto_reasons": auto_reasons(request),
            "n_reference": len(reference) if reference else 0,
            "reference": source if reference else None,
            "n_replayed": replayed,  # reference examples inside n_train
        }
    )
    # Resumable checkpoints (jobs/checkpoints.py): their callback asks the Trainer to save, then uploads. Scratch
    # keeps the newest save only (+ the best under early stopping, whose saves then need the optimizer too).
    saver = checkpoints.CheckpointCallback(
        store,
        reporter,
        settings.checkpoint_s,
        settings.checkpoint_steps,
        lambda: checkpoints.job_state(callback, results.get("baseline"), baseline_predictions, evaluator),
    )
    saving = {"save_total_limit": 1, **({"save_only_model": False} if saver.enabled else {})}
    args = training_arguments(hp, work / "trainer", report_to, logging_steps, eval_strategy, stopping, saving, causal)
    callback = ReportCallback(reporter, settings.heartbeat_s, causal)
    keeper = None if causal else safeguards.PredictionKeeper(classification_compute_metrics(data.labels or []))
    callbacks: list[Any] = [saver, callback] if saver.enabled else [callback]  # callback may veto a save (cancel)
    if hp.early_stopping is not None:
        callbacks.append(EarlyStoppingCallback(hp.early_stopping.patience, hp.early_stopping.min_delta))
    trainer = JobTrainer(
        model=model,
        args=args,
        train_dataset=data.train,
        eval_dataset=data.validation,
        processing_class=tokenizer,
        data_collator=PadCollator(pad_id, 8 if torch.cuda.is_available() else None),
        compute_metrics=keeper,
        callbacks=callbacks,
    )
    trainer.remove_callback(PrinterCallback)  # the callback reports to the job; the worker log stays quiet
    reference_batches, reference_before = safeguards.attach_penalties(trainer, hp.l1_lambda, hp.ewc_lambda, reference)

    if prepared.class_weights and data.labels:
        trainer.class_weights = torch.tensor([prepared.class_weights.get(name, 1.0) for name in data.labels])

    # 5. Baseline: the untrained model on the validation set (metric points at step 0).
    results: dict[str, Any] = {}
    if prepared.report:
        results["data"] = prepared.report
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
    )
    baseline_predictions = None
    # A lost attempt's checkpoint: its step, histories and baseline instead of step 0 and a new baseline.
    resumed = checkpoints.resume(store, reporter, work / "trainer", callback, evaluator)
    if resumed is not None:
        results["resumed_from_step"] = resumed.step
        if resumed.baseline is not None:
            results["baseline"] = resumed.baseline
        baseline_predictions = resumed.baseline_predictions
    elif data.validation is not None:
        trainer.evaluate()
        results["baseline"] = summary(callback.eval_history[-1]["values"])
        baseline_predictions = keeper.last if keeper else None
        results["baseline"].update(outcome.generation_eval(evaluator, trainer, reporter, "baseline"))

    # 6. Train; the callback reports progress and stops at a cancel request.
    started = time.monotonic()
    output = trainer.train(resume_from_checkpoint=str(resumed.path) if resumed else None)
    trained_evals = list(callback.eval_history)
    # The whole run's, over every attempt (a resumed Trainer reports on its own steps only; jobs/checkpoints.py).
    results.update(
        steps=trainer.state.global_step,
        train_seconds=round(callback.earlier_seconds + time.monotonic() - started, 3),
        tokens_seen=int(trainer.state.num_input_tokens_seen or 0),  # restored from the checkpoint: every attempt's
        train_loss=checkpoints.run_train_loss(
            callback.train_history, resumed, output.training_loss, trainer.state.global_step
        ),
    )
    if callback.train_losses:
        results["train_loss_first"], results["train_loss_last"] = (
            callback.train_losses[0],
            callback.train_losses[-1],
        )
    if callback.cancelled:
        reporter.event(f"cancelled at step {trainer.state.global_step}; no artifacts are kept")
        return JobStatus.cancelled, results, None

    # 7. Final evaluation (reusing the one the schedule just ran at the last step, if any).
    if data.validation is not None:
        last = callback.eval_history[-1]
        # after early stopping the best weights were reloaded: evaluate them, not the last ones
        if stopping or last["step"] != trainer.state.global_step or len(callback.eval_history) == 1:
            trainer.evaluate()
            last = callback.eval_history[-1]
        results["final"] = summary(last["values"])
        results["final"].update(outcome.generation_eval(evaluator, trainer, reporter, "final"))
        if keeper and keeper.last and baseline_predictions:
            results.update(outcome.bias_report(data, request.group_field, baseline_predictions, keeper.last))
    if stopping:
        results["early_stopping"] = {
            "metric": stopping["metric_for_best_model"],
            "best_metric": trainer.state.best_metric,
            "best_step": checkpoints.checkpoint_step(trainer.state.best_model_checkpoint),
            "stopped_at_step": trainer.state.global_step,
            "stopped_early": trainer.state.global_step < total_steps,
        }
    if reference_before is not None:
        results["forgetting"] = safeguards.forgetting(
            reference_before, safeguards.mean_loss(trainer.model, reference_batches)
        )
    results["diagnostics"] = safeguards.diagnose(  # the curves of the run, not the re-evaluation of kept weights
        callback.train_history, trained_evals, (results.get("early_stopping") or {}).get("best_step")
    )
    for flag in results["diagnostics"]:
        reporter.event(f"{flag['flag']}: {flag['message']}", level=EventLevel.warning)

    # 8. Artifacts: write locally, upload to staging, move into place; then the record can list them.
    published = outcome.save_outputs(
        store,
        work / "out",
        reporter,
        request,
        hp.model_dump(),
        total_steps,
        data,
        trainer,
        tokenizer,
        evaluator,
        callback,
        results,
    )
    if published is None:
        return JobStatus.cancelled, results, None
    megabytes = sum(a.bytes for a in published) / 1e6
    reporter.event(f"{len(published)} artifacts saved ({megabytes:.3g} MB)")
    return JobStatus.succeeded, results, published


# ----------------------------------------------------------------------------- steps of the story


def _stop_seen(reporter: Reporter) -> bool:
    """The Evaluator's cancel check: it stops by itself, so no interrupt is needed."""
    if reporter.cancel_requested():
        INTERRUPTER.acknowledge()
        return True
    return False


def _save_record(store: Store, reporter: Reporter) -> None:
    """The final record also goes to the store: a lost Redis does not lose a finished job's results."""
    try:
        record = reporter.read()
        if record is not None:
            store.write_json(job_record_path(reporter.tenant, reporter.job_id), record)
    except Exception:
        log.exception("could not write the final job record to the store")
