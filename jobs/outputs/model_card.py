"""The model card README.md: what was trained on what, how, and how it scores before vs after training."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ftjobs.jobs.outputs.plots import LOSS_CURVE
from ftjobs.jobs.outputs.samples import EVAL_SAMPLES

MODEL_CARD = "README.md"


def _fmt(value: Any) -> str:
    """A table cell: floats to 4 significant digits, None empty."""
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def model_card(
    *,
    job: dict[str, Any],
    data: dict[str, Any],
    hyperparameters: dict[str, Any],
    results: dict[str, Any],
    weights_dir: str,
) -> str:
    """A Markdown model card: what was trained on what, how, and how it scores before vs after."""
    lines = [
        f"# {job.get('suffix') or job['job_id']}",
        "",
        f"Fine-tuned by ftjobs job `{job['job_id']}` (attempt {job.get('attempt', 1)}).",
        "",
        "| | |",
        "|---|---|",
        f"| base model | `{job['model']}` |",
        f"| task | {job['task']} |",
        f"| method | {job['method']} |",
        f"| weights | `{weights_dir}/` |",
        "",
        "## Data",
        "",
        "| | file | examples |",
        "|---|---|---|",
        f"| training | `{data.get('training_file')}` | {data.get('n_train')} |",
        f"| validation | `{data.get('validation_file') or 'held out from training_file'}` "
        f"| {data.get('n_validation')} |",
        "",
        "## Hyperparameters (as resolved)",
        "",
        "| name | value |",
        "|---|---|",
        *(f"| {k} | {_fmt(v)} |" for k, v in sorted(hyperparameters.items()) if not isinstance(v, dict | list)),
        "",
        "## Results",
        "",
    ]
    baseline, final = results.get("baseline") or {}, results.get("final") or {}
    names = [k for k in final if "/" not in k] + [k for k in baseline if k not in final and "/" not in k]
    if names:
        lines += ["| metric | before training | after training |", "|---|---|---|"]
        lines += [f"| {k} | {_fmt(baseline.get(k))} | {_fmt(final.get(k))} |" for k in names]
    else:
        lines.append("No validation data, so no evaluation.")
    lines += [
        "",
        f"Training: {results.get('steps')} steps in {_fmt(results.get('train_seconds'))} s, "
        f"train loss {_fmt(results.get('train_loss_first'))} -> {_fmt(results.get('train_loss_last'))}.",
        "",
        f"Files: `metrics.json` (every logged point), `{LOSS_CURVE}`, `{EVAL_SAMPLES}` (validation examples "
        "with predictions), `manifest.json` (sizes and SHA-256 of every file).",
        "",
    ]
    return "\n".join(lines)


def write_model_card(out: Path, **kwargs: Any) -> Path:
    """Write `model_card(**kwargs)` as README.md under `out`."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / MODEL_CARD
    path.write_text(model_card(**kwargs), encoding="utf-8")
    return path
