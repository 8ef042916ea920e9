"""An evaluation job (`evaluate_only`, made by `POST /v1/evaluations`): a training job's story without the training.

    inputs -> model (the base, or the parent job's final or checkpoint weights) -> trainer -> one evaluation -> save

The phases are the training job's own (jobs/training/: load_inputs, build_model, build_trainer), so the file is
prepared, tokenized and scored exactly as a training job's validation file is: results.final holds the same
metrics (loss, accuracy/F1 or BLEU/ROUGE/perplexity ...), confusion matrix and per-group breakdown, and the job
leaves metrics.json and eval_samples.jsonl (no weights). A monitor's run (core/monitors.py) is concluded here,
before the job finishes, so its decision is an event of this job.
"""

from __future__ import annotations

import json
from pathlib import Path

from ftjobs.client.models import Artifact, EventLevel, Hyperparameters, JobCreate, JobStatus
from ftjobs.core import monitors
from ftjobs.core.settings import Settings
from ftjobs.core.storage import Storage
from ftjobs.jobs.evaluation.bias import bias_report
from ftjobs.jobs.evaluation.generation import generation_eval
from ftjobs.jobs.evaluation.metrics import summary
from ftjobs.jobs.outputs import artifacts, samples, trackers
from ftjobs.jobs.outputs.results import Results
from ftjobs.jobs.report import Reporter
from ftjobs.jobs.training.inputs import load_inputs
from ftjobs.jobs.training.model import build_model
from ftjobs.jobs.training.run import Run, build_trainer


def evaluate_job(
    request: JobCreate, hp: Hyperparameters, settings: Settings, store: Storage, reporter: Reporter, work: Path
) -> tuple[JobStatus, Results, list[Artifact] | None]:
    """The story of one evaluation job; returns (status, results, artifacts) as `train_job` does."""
    inputs = load_inputs(request, hp, settings.model_roots, store, reporter, work)
    model = build_model(inputs, reporter)
    run = build_trainer(inputs, model, settings, store, reporter, work)
    results = Results(data=inputs.prepared.report or None)
    evaluate(run, reporter, results)
    published = save(run, results, store, reporter, work)
    if published is None:  # cancelled while saving
        return JobStatus.cancelled, results, None
    conclude_monitor_run(request, settings, reporter, results)
    return JobStatus.succeeded, results, published


def evaluate(run: Run, reporter: Reporter, results: Results) -> None:
    """The model's scores on the file, as `train.evaluate_final` measures a trained model (stage `final`)."""
    trainer, callback, request = run.trainer, run.callback, run.inputs.request
    with callback.evaluation("evaluation"):  # progress events batch by batch, with an ETA
        trainer.evaluate()
    results.final = summary(callback.eval_history[-1]["values"])
    results.final.update(generation_eval(run.evaluator, trainer, reporter, "final"))
    results.generation = run.evaluator.echo()
    if run.scorer is not None:
        results.final.update(run.scorer("final"))
    if run.keeper and run.keeper.last:  # classification: one set of predictions, so "final" only
        confusion, groups = bias_report(run.inputs.data, request.group_field, run.keeper.last, run.keeper.last)
        results.confusion_matrix = {"labels": confusion["labels"], "final": confusion["final"]}
        results.groups = {"field": groups["field"], "final": groups["final"]} if groups else None
    shown = ", ".join(f"{k} {v:.4g}" for k, v in results.final.items() if isinstance(v, float) and "/" not in k)
    reporter.event(f"evaluation: {shown}")


def save(run: Run, results: Results, store: Storage, reporter: Reporter, work: Path) -> list[Artifact] | None:
    """metrics.json, eval_samples.jsonl (and data_report.json, TensorBoard logs) with a manifest, published."""
    out, request = work / "out", run.inputs.request
    out.mkdir(parents=True, exist_ok=True)
    reporter.event("saving artifacts")
    trackers.finish(out)
    samples.write_eval_samples(out, run.evaluator.sample_rows())
    metrics = {**results.as_json(), "history": {"eval": run.callback.eval_history}}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True, default=str) + "\n")
    job = {
        "job_id": reporter.job_id,
        "tenant": reporter.tenant,
        "attempt": reporter.attempt,
        "model": run.inputs.model_name,  # as the tenant may see it
        "task": request.task.value,
        "method": request.method.type,
        "evaluate_only": True,
        "evaluated": {"parent_job_id": request.parent_job_id, "checkpoint_step": request.checkpoint_step},
    }
    names = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    described = [artifacts.describe(out, name) for name in names]
    files = [a.model_dump(include={"name", "bytes", "sha256"}) for a in described]
    (out / artifacts.MANIFEST).write_text(json.dumps({**job, "files": files}, indent=2, sort_keys=True) + "\n")
    written = [*described, artifacts.describe(out, artifacts.MANIFEST)]
    return artifacts.publish(
        store, out, written, reporter.tenant, reporter.job_id, reporter.attempt, lambda: not reporter.cancel_requested()
    )


def conclude_monitor_run(request: JobCreate, settings: Settings, reporter: Reporter, results: Results) -> None:
    """A monitor's evaluation: compare, decide, and (degraded) raise the webhook and start the retraining job."""
    monitor_id, run_id = request.metadata.get(monitors.MONITOR_KEY), request.metadata.get(monitors.RUN_KEY)
    if not monitor_id or not run_id:
        return
    try:
        run = monitors.conclude(reporter.redis, settings, reporter.tenant, monitor_id, run_id, results.final or {})
    except Exception as e:  # the evaluation stands; the run shows `evaluating` until a later one
        reporter.event(f"monitor {monitor_id}: could not conclude run {run_id}: {e}", level=EventLevel.warning)
        return
    if run is None:
        return
    level = EventLevel.warning if run.status == "degraded" else EventLevel.info
    reporter.event(monitors.describe(run), level=level, data=run.model_dump(mode="json"))
