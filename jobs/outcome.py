"""What a training run leaves behind: its evaluation results (generation scores, bias report) and its artifacts.

jobs/train.py tells the story of a job; the pieces here turn a trained model and its histories into
`results` and into the files a user downloads (eval samples, loss curve, model card, weights, metrics).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ftjobs.client.models import Artifact, JobCreate
from ftjobs.jobs import artifacts, integrations, report_files, safeguards
from ftjobs.jobs.data import Datasets
from ftjobs.jobs.generation import Evaluator
from ftjobs.jobs.interrupts import Cancelled
from ftjobs.jobs.report import Reporter
from ftjobs.jobs.storage import Store
from ftjobs.jobs.trainer import ReportCallback


def generation_eval(evaluator: Evaluator, trainer: Any, reporter: Reporter, stage: str) -> dict[str, float]:
    """Run the generation pass; its metrics also become an eval metric point at the current step."""
    if not evaluator.active:
        return {}
    values = evaluator.run(trainer.model, stage, Cancelled)
    if values:
        step = trainer.state.global_step
        reporter.metric("eval", step, round(trainer.state.epoch or 0.0, 4), values)
        shown = ", ".join(f"{k}={v:.4g}" for k, v in values.items())
        reporter.event(f"{stage} generation ({len(evaluator.items[: evaluator.limit])} examples): {shown}")
    return values


def bias_report(
    data: Datasets, group_field: str | None, before: tuple[list[int], list[int]], after: tuple[list[int], list[int]]
) -> dict[str, Any]:
    """Confusion matrices (and per-group metrics) of the validation set before and after training."""
    n = len(data.labels or [])
    out: dict[str, Any] = {
        "confusion_matrix": {
            "labels": data.labels,
            "baseline": safeguards.confusion(*before, n),
            "final": safeguards.confusion(*after, n),
        }
    }
    groups = safeguards.row_groups(data.validation_rows, group_field) if group_field else []
    if groups and len(groups) == len(after[0]):  # one group per validation example, in order
        out["groups"] = {
            "field": group_field,
            "baseline": safeguards.group_metrics(*before, groups, n),
            "final": safeguards.group_metrics(*after, groups, n),
        }
    return out


def save_outputs(
    store: Store,
    out: Path,
    reporter: Reporter,
    request: JobCreate,
    hyperparameters: dict[str, Any],
    total_steps: int,
    data: Datasets,
    trainer: Any,
    tokenizer: Any,
    evaluator: Evaluator,
    callback: ReportCallback,
    results: dict[str, Any],
) -> list[Artifact] | None:
    """Write every artifact under `out`, publish them to the store; None when the job was cancelled meanwhile."""
    tenant, job_id = reporter.tenant, reporter.job_id
    reporter.event("saving artifacts")
    integrations.finish(out)  # end the tracker runs; wandb/ and mlruns/ become one .tar.gz each
    manifest_job = {
        "job_id": job_id,
        "tenant": tenant,
        "attempt": reporter.attempt,
        "model": request.model,
        "task": request.task,
        "method": request.method.type,
    }
    metrics = {**results, "history": {"train": callback.train_history, "eval": callback.eval_history}}
    report_files.write_eval_samples(out, evaluator.sample_rows())
    report_files.write_loss_curve(out, metrics["history"])
    report_files.write_model_card(
        out,
        job={**manifest_job, "suffix": request.suffix},
        data={
            "training_file": request.training_file,
            "validation_file": request.validation_file,
            "n_train": len(data.train),
            "n_validation": len(data.validation) if data.validation else 0,
        },
        hyperparameters={
            **hyperparameters,
            "total_steps": total_steps,
            **{f"method.{k}": v for k, v in request.method.model_dump().items()},
        },
        results=results,
        weights_dir="model" if request.method.type == "full" else "adapter",
    )
    written = artifacts.write_artifacts(
        out,
        model=trainer.model,
        tokenizer=tokenizer,
        method=request.method,
        task=request.task,
        labels=data.labels,
        metrics=metrics,
        job=manifest_job,
    )
    return artifacts.publish(
        store, out, written, tenant, job_id, reporter.attempt, lambda: not reporter.cancel_requested()
    )
