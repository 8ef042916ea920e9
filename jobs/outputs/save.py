"""Saving a finished run: every artifact written under one folder, then published to the store in one move.

    out/  adapter/ or model/, labels.json, metrics.json, README.md (model card), loss_curve.png,
          eval_samples.jsonl, data_report.json, tensorboard/, wandb.tar.gz, mlruns.tar.gz, manifest.json
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ftjobs.client.models import Artifact, JobCreate
from ftjobs.core.storage import Storage
from ftjobs.jobs.data.examples import Datasets
from ftjobs.jobs.evaluation.diagnostics import tracked_metric
from ftjobs.jobs.evaluation.generation import Evaluator
from ftjobs.jobs.evaluation.progress import PhaseProgress, last_progress
from ftjobs.jobs.outputs import artifacts, model_card, plots, samples, trackers
from ftjobs.jobs.outputs.results import Results
from ftjobs.jobs.report import Reporter


def save_outputs(
    store: Storage,
    out: Path,
    reporter: Reporter,
    *,
    request: JobCreate,
    model_name: str,
    hyperparameters: dict[str, Any],
    total_steps: int,
    data: Datasets,
    model: Any,
    tokenizer: Any,
    evaluator: Evaluator,
    history: dict[str, list[dict[str, Any]]],
    results: Results,
) -> list[Artifact] | None:
    """Write every artifact under `out`, publish them to the store; None when the job was cancelled meanwhile.
    `model_name`: the base model as the tenant may see it (core/base_models.shown_model)."""
    tenant, job_id = reporter.tenant, reporter.job_id
    reporter.event("saving artifacts")
    reporter.progress(last_progress(reporter).model_copy(update={"phase": "saving", "eta_seconds": None}))
    trackers.finish(out)  # end the tracker runs; wandb/ and mlruns/ become one .tar.gz each
    manifest_job = {
        "job_id": job_id,
        "tenant": tenant,
        "attempt": reporter.attempt,
        "model": model_name,  # as the tenant may see it: relative to its model root, never a server path
        "task": request.task,
        "method": request.method.type,
    }
    measured = results.as_json()
    metrics = {**measured, "history": history}  # history: {"train": [...], "eval": [...]} metric points
    rows = evaluator.sample_rows()
    samples.write_eval_samples(out, rows)
    metric = tracked_metric(request.task, request.hyperparameters.early_stopping)  # the curve's and card's metric
    plots.write_loss_curve(out, history, title=f"{job_id}: {request.task} ({request.method.type})", metric=metric[0])
    resolved = reporter.with_resolved({})  # the record's resolved values: the method as trained, target modules ...
    model_card.write_model_card(
        out,
        job={**manifest_job, "suffix": request.suffix},
        data={
            "training_file": request.training_file,
            "validation_file": request.validation_file,
            "n_train": len(data.train),
            "n_validation": len(data.validation) if data.validation else 0,
        },
        hyperparameters={**hyperparameters, **resolved, "total_steps": total_steps},
        results=measured,
        method=resolved.get("method") or request.method.model_dump(mode="json"),
        labels=data.labels if request.task == "classification" else None,
        history=history,
        samples=rows,
        metric=metric,
        files=sorted({p.relative_to(out).parts[0] + ("/" if p.is_dir() else "") for p in out.iterdir()}),
    )
    written = artifacts.write_artifacts(
        out,
        model=model,
        tokenizer=tokenizer,
        method=request.method,
        task=request.task,
        labels=data.labels,
        metrics=metrics,
        job=manifest_job,
    )
    uploading = PhaseProgress(reporter, "saving", "uploading artifacts", "bytes", sum(a.bytes for a in written))
    published = artifacts.publish(
        store, out, written, tenant, job_id, reporter.attempt, lambda: not reporter.cancel_requested(),
        uploaded=uploading.start().advance,
    )  # fmt: skip
    if published is not None:
        uploading.finish()
    return published
