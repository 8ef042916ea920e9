"""One attempt of one fine-tuning job, top to bottom: the function RQ runs in its forked work horse.

    run(payload) -> claim the job (queued -> running) -> train_job:
        inputs -> model -> trainer -> baseline evaluation -> train -> final evaluation -> save
    -> succeeded (or failed / cancelled, with a JobError naming what went wrong; or paused, when asked to, after a
       checkpoint at a step end: a resume runs the next attempt from there).

The setup phases live in jobs/training/ (inputs.py, model.py, run.py), the measurements in jobs/evaluation/,
what the job leaves behind in jobs/outputs/; `Results` (jobs/outputs/results.py) is what flows into the record.

Everything the user sees goes through `jobs.report.Reporter`. A job failure never raises out of `run`
(RQ records the RQ job as finished; the ftjobs record holds the failure); tracebacks go to the worker's
stderr only, never into the record or its events.
"""

from __future__ import annotations

import logging
import os
import sys
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
from transformers.utils import logging as hf_logging

from ftjobs.client.models import Artifact, EventLevel, JobCreate, JobError, JobStatus, QueuePayload
from ftjobs.core.keys import JobField, job_record_path
from ftjobs.core.queue import connect
from ftjobs.core.settings import Settings
from ftjobs.core.storage import Storage, remove_checkpoints
from ftjobs.jobs.data.inputs import hyperparameters, short
from ftjobs.jobs.errors import JobFailed
from ftjobs.jobs.evaluate_job import evaluate_job
from ftjobs.jobs.evaluation.bias import bias_report
from ftjobs.jobs.evaluation.diagnostics import diagnose, forgetting, tracked_metric
from ftjobs.jobs.evaluation.generation import generation_eval
from ftjobs.jobs.evaluation.metrics import summary
from ftjobs.jobs.interrupts import INTERRUPTER, Cancelled, Paused, Preempted
from ftjobs.jobs.outputs import trackers
from ftjobs.jobs.outputs.results import EarlyStoppingOutcome, Results
from ftjobs.jobs.outputs.save import save_outputs
from ftjobs.jobs.report import Heartbeat, Reporter, ServerPaths
from ftjobs.jobs.sweep_pruning import pruned_outcome
from ftjobs.jobs.training import checkpoints, distributed, dpo, preflight, safeguards, sharding
from ftjobs.jobs.training.inputs import load_inputs
from ftjobs.jobs.training.model import build_model
from ftjobs.jobs.training.run import Baseline, Run, build_trainer

log = logging.getLogger("ftjobs.train")
CANCEL_GRACE_S = 3.0  # seconds a step may run on after a cancel was seen before it is interrupted


def run(payload: dict[str, Any]) -> dict[str, Any]:
    """RQ job function: one attempt of one job; returns a small summary, never raises for a job failure."""
    p = QueuePayload.model_validate(payload)
    settings = Settings.from_env()
    redis = connect(settings.redis_url)
    try:
        return _attempt(p, settings, redis)
    finally:
        INTERRUPTER.disarm()
        redis.close()


def _attempt(p: QueuePayload, settings: Settings, redis: Redis) -> dict[str, Any]:
    summary: dict[str, Any] = {"job_id": p.job_id, "tenant": p.tenant, "attempt": p.attempt}
    reporter = Reporter(redis, p.tenant, p.job_id, p.attempt, ServerPaths.for_settings(settings))
    record = reporter.read()
    if record is None:
        return {**summary, "status": "missing"}
    rq_job = get_current_job()
    worker_name = (rq_job.worker_name if rq_job else None) or f"worker-{os.getpid()}"
    store = Storage(settings.storage_url)
    if not reporter.start(worker_name, queue=rq_job.origin if rq_job else None):
        if JobStatus((reporter.read() or {}).get(JobField.status, JobStatus.queued)).is_terminal:
            remove_checkpoints(store, p.tenant, p.job_id)  # cancelled while a lost attempt's requeue waited
        return {**summary, "status": "skipped"}  # cancelled while queued, or a newer attempt owns the job

    status, error, outputs = JobStatus.failed, None, None
    results = Results()  # a job that fails records no results
    # A cancel noticed by the heartbeat thread stops a step that takes minutes within seconds (jobs/interrupts.py).
    stop = Heartbeat(reporter, settings.heartbeat_s, on_stop=lambda: INTERRUPTER.request(Cancelled, CANCEL_GRACE_S))
    with stop, tempfile.TemporaryDirectory(prefix="ftjobs-") as tmp:
        reporter.hidden = ServerPaths.for_settings(settings, [Path(tmp)])
        try:
            if distributed.processes(record) > 1 or distributed.nodes_of(record) > 1:  # DDP: torchrun's ranks
                status, results, outputs = distributed.supervise(p, record, settings, store, reporter, Path(tmp))
            else:
                status, results, outputs = train_job(record, settings, store, reporter, Path(tmp))
        except Cancelled:
            status = JobStatus.cancelled
        except Paused as e:  # checkpointed at a step end: the job waits, paused, with no worker, until resumed
            trackers.end(JobStatus.cancelled)
            INTERRUPTER.disarm()
            return {**summary, "status": _pause(reporter, store, e)}
        except Preempted:  # the worker is stopping: it requeues the job, which resumes from its checkpoint
            trackers.end(JobStatus.cancelled)
            return {**summary, "status": "preempted"}
        except Exception as e:
            error = job_error(e)
        trackers.end(status)  # W&B/MLflow runs a failure or a cancel left open (a no-op after finish)
    INTERRUPTER.disarm()  # from here on only our own guarded writes: nothing may interrupt them
    if error is not None:
        status = JobStatus.failed
    if reporter.finish(status, error=error, results=results.as_json(), artifacts=outputs):
        _save_record(store, reporter)
        remove_checkpoints(store, p.tenant, p.job_id)  # finished: its checkpoints are of no further use
    return {**summary, "status": status.value, "error": error.code if error else None}


def job_error(e: Exception) -> JobError:
    """The record's error for what stopped a job (a rank's too: jobs/training/distributed.py)."""
    if isinstance(e, JobFailed):
        return e.to_error()
    if isinstance(e, torch.OutOfMemoryError | MemoryError):
        advice = "try a smaller batch_size or max_seq_length, or LoRA"
        return JobError(code="out_of_memory", message=f"{type(e).__name__}: {short(e)}; {advice}")
    if isinstance(e, JobTimeoutException):  # RQ's limit for one attempt (FTJOBS_JOB_TIMEOUT_S)
        return JobError(code="timeout", message=short(e))
    # Our fault or the environment's: the record gets one line, the worker's stderr the traceback.
    traceback.print_exc()
    return JobError(code="internal_error", message=f"{type(e).__name__}: {short(e)}")


# ----------------------------------------------------------------------------- the story of one job


def train_job(
    record: dict[str, Any], settings: Settings, store: Storage, reporter: Reporter, work: Path
) -> tuple[JobStatus, Results, list[Artifact] | None]:
    """The story of one job; returns (status, results, artifacts)."""
    request = JobCreate.model_validate(record["request"])
    hp = hyperparameters(request, record.get("resolved") or {})
    trackers.check(request.integrations)  # before any work: a missing tracker fails fast
    _quiet_libraries()
    if request.evaluate_only:  # an evaluation job: the same setup, one evaluation, no training
        return evaluate_job(request, hp, settings, store, reporter, work)

    inputs = load_inputs(request, hp, settings.model_roots, store, reporter, work)
    preflight.check(inputs, reporter, settings.job_memory_mb)  # before the weights load: fail now, not at an OOM
    model = build_model(inputs, reporter)
    run = build_trainer(inputs, model, settings, store, reporter, work)
    results = Results(data=inputs.prepared.report or None)
    baseline = evaluate_baseline(run, store, reporter, work)
    results.resumed_from_step = baseline.resumed.step if baseline.resumed else None
    results.baseline = baseline.scores
    trained_evals = train(run, results)
    if run.callback.cancelled:
        reporter.event(f"cancelled at step {run.trainer.state.global_step}; no artifacts are kept")
        return JobStatus.cancelled, results, None
    if run.limits is not None and run.limits.exceeded is not None:  # stopped at a tenant limit: no artifacts
        raise run.limits.exceeded
    evaluate_final(run, trained_evals, reporter, results)
    sharding.gather_weights(run.trainer)  # FSDP: every rank gathers the full weights rank 0 saves
    if not distributed.is_main():  # a DDP rank besides 0: rank 0 alone saves and reports the outcome
        return JobStatus.succeeded, results, None
    published = save(run, results, store, reporter, work)
    if published is None:
        return JobStatus.cancelled, results, None
    megabytes = sum(a.bytes for a in published) / 1e6
    reporter.event(f"{len(published)} artifacts saved ({megabytes:.3g} MB)")
    return JobStatus.succeeded, results, published


# ----------------------------------------------------------------------------- the phases after the setup


def evaluate_baseline(run: Run, store: Storage, reporter: Reporter, work: Path) -> Baseline:
    """The untrained model on the validation set (step 0), or a lost attempt's checkpoint and its baseline."""
    baseline = run.baseline
    baseline.resumed = checkpoints.resume(store, reporter, work / "trainer", run.callback, run.evaluator)
    if baseline.resumed is not None:
        baseline.scores, baseline.predictions = baseline.resumed.baseline, baseline.resumed.baseline_predictions
    elif run.inputs.data.validation is not None:
        with run.callback.evaluation("baseline evaluation"):  # progress events batch by batch, with an ETA
            run.trainer.evaluate()
        baseline.scores = summary(run.callback.eval_history[-1]["values"])
        baseline.predictions = run.keeper.last if run.keeper else None
        baseline.scores.update(generation_eval(run.evaluator, run.trainer, reporter, "baseline"))
        if run.scorer is not None:
            baseline.scores.update(run.scorer("baseline"))
    return baseline


def train(run: Run, results: Results) -> list[dict[str, Any]]:
    """Train (from the checkpoint, if resumed); returns the evaluations the schedule ran on the way."""
    # The callback reports progress and stops at a cancel request; the evaluations are the curves of the run,
    # taken before a final re-evaluation of the kept weights adds to them.
    trainer, callback, resumed = run.trainer, run.callback, run.baseline.resumed
    started, cpu = time.monotonic(), time.process_time()
    output = trainer.train(resume_from_checkpoint=str(resumed.path) if resumed else None)
    # The whole run's, over every attempt (a resumed Trainer reports on its own steps only; training/checkpoints.py).
    step = trainer.state.global_step
    log.info(  # CPU: every thread of the horse (bench/job_overhead.py compares it with plain HF)
        "trained %d steps in %.1f s wall, %.1f s CPU", step, time.monotonic() - started, time.process_time() - cpu
    )
    results.steps = step
    results.pruned = pruned_outcome(trainer.callback_handler.callbacks)  # a sweep's trial its pruner stopped
    results.train_seconds = round(callback.earlier_seconds + time.monotonic() - started, 3)
    results.tokens_seen = int(trainer.state.num_input_tokens_seen or 0)  # restored from the checkpoint: every attempt's
    results.train_loss = checkpoints.run_train_loss(callback.train_history, resumed, output.training_loss, step)
    if callback.train_losses:
        results.train_loss_first, results.train_loss_last = callback.train_losses[0], callback.train_losses[-1]
    return list(callback.eval_history)


def evaluate_final(run: Run, trained_evals: list[dict[str, Any]], reporter: Reporter, results: Results) -> None:
    """The trained model's scores, bias report, early stopping's outcome, forgetting and the curves' diagnosis."""
    trainer, callback, data, stopping = run.trainer, run.callback, run.inputs.data, run.schedule.stopping
    if data.validation is not None:
        last = callback.eval_history[-1]  # reuse the evaluation the schedule just ran at the last step, if any
        # after early stopping the best weights were reloaded: evaluate them, not the last ones
        if stopping or last["step"] != trainer.state.global_step or len(callback.eval_history) == 1:
            with callback.evaluation("final evaluation"):
                trainer.evaluate()
            last = callback.eval_history[-1]
        results.final = summary(last["values"])
        results.final.update(generation_eval(run.evaluator, trainer, reporter, "final"))
        results.generation = run.evaluator.echo()
        if run.scorer is not None:
            results.final.update(run.scorer("final"))
        if run.keeper and run.keeper.last and run.baseline.predictions:
            results.confusion_matrix, results.groups = bias_report(
                data, run.inputs.request.group_field, run.baseline.predictions, run.keeper.last
            )
            if results.groups is not None and getattr(trainer, "group_loss", None) is not None:
                results.groups["debias"] = trainer.group_loss.report()  # data.debias: groups and their weights
    if stopping:
        results.early_stopping = EarlyStoppingOutcome(
            metric=stopping["metric_for_best_model"],
            best_metric=trainer.state.best_metric,
            best_step=checkpoints.checkpoint_step(trainer.state.best_model_checkpoint),
            stopped_at_step=trainer.state.global_step,
            stopped_early=trainer.state.global_step < run.schedule.total_steps,
        )
    if run.reference_before is not None:
        results.forgetting = forgetting(
            run.reference_before, safeguards.mean_loss(trainer.model, run.reference_batches)
        )
    kept_step = results.early_stopping.best_step if results.early_stopping else None
    metric, greater = tracked_metric(run.inputs.request.task, run.inputs.hp.early_stopping)  # the task's, not loss
    results.diagnostics = diagnose(callback.train_history, trained_evals, kept_step, metric, greater)
    for flag in results.diagnostics:
        reporter.event(f"{flag['flag']}: {flag['message']}", level=EventLevel.warning)


def save(run: Run, results: Results, store: Storage, reporter: Reporter, work: Path) -> list[Artifact] | None:
    """Artifacts: write locally, upload to staging, move into place; then the record can list them."""
    inputs = run.inputs
    dpo.drop_reference(run.trainer.model)  # a continued LoRA's frozen reference copy is not part of the result
    return save_outputs(
        store,
        work / "out",
        reporter,
        request=inputs.request,
        model_name=inputs.model_name,
        hyperparameters=inputs.hp.model_dump(),
        total_steps=run.schedule.total_steps,
        data=inputs.data,
        model=run.trainer.model,
        tokenizer=inputs.tokenizer,
        evaluator=run.evaluator,
        history={"train": run.callback.train_history, "eval": run.callback.eval_history},
        results=results,
    )


# ----------------------------------------------------------------------------- helpers


def _quiet_libraries() -> None:
    """Progress goes to the job record, not to tqdm bars or deprecation noise in the worker log."""
    hf_logging.disable_progress_bar()
    hf_logging.disable_default_handler()  # its lines go through the worker's handler (core/logs.py), JSON included
    hf_logging.enable_propagation()
    # peft still calls this transformers 5 deprecation on every model it wraps: noise in the worker log.
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)


def _pause(reporter: Reporter, store: Storage, paused: Paused) -> str:
    """running -> paused after the pause's checkpoint; a cancel that came meanwhile wins (its checkpoints go)."""

    def cancelling() -> bool:
        return bool((reporter.read() or {}).get(JobField.cancel_requested))

    message = f"paused at step {paused.step}; a resume continues from the checkpoint at step {paused.checkpoint_step}"
    if not cancelling() and reporter.pause(message, step=paused.step, checkpoint_step=paused.checkpoint_step):
        if not cancelling():
            return "paused"
        ended = reporter.finish(JobStatus.cancelled, statuses=[JobStatus.paused])  # a cancel beside the pause
    else:
        ended = reporter.finish(JobStatus.cancelled)  # cancelled while it saved (False: a newer attempt owns it)
    if not ended:
        return "skipped"
    remove_checkpoints(store, reporter.tenant, reporter.job_id)
    return "cancelled"


def _save_record(store: Storage, reporter: Reporter) -> None:
    """The final record also goes to the store: a lost Redis does not lose a finished job's results."""
    try:
        record = reporter.read()
        if record is not None:
            store.write_json(job_record_path(reporter.tenant, reporter.job_id), record)
    except Exception:
        log.exception("could not write the final job record to the store")


if __name__ == "__main__":  # one rank of a multi-process job, started by torchrun (jobs/training/distributed.py)
    raise SystemExit(distributed.rank_main(sys.argv[1:], train_job, job_error))
