"""Human-facing artifacts of a job: eval_samples.jsonl, loss_curve.png and the model card README.md."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

EVAL_SAMPLES = "eval_samples.jsonl"
LOSS_CURVE = "loss_curve.png"
MODEL_CARD = "README.md"


def write_eval_samples(out: Path, rows: Sequence[dict[str, Any]]) -> Path | None:
    if not rows:
        return None
    out.mkdir(parents=True, exist_ok=True)
    path = out / EVAL_SAMPLES
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def write_loss_curve(out: Path, history: dict[str, list[dict[str, Any]]]) -> Path | None:
    """Train and validation loss against the optimizer step (matplotlib, no display needed)."""
    train = [(h["step"], h["values"]["loss"]) for h in history.get("train", []) if "loss" in h["values"]]
    evals = [(h["step"], h["values"]["loss"]) for h in history.get("eval", []) if "loss" in h["values"]]
    if not train and not evals:
        return None
    import matplotlib

    matplotlib.use("Agg")  # no display in a worker
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    if train:
        ax.plot(*zip(*train, strict=True), label="train loss")
    if evals:
        ax.plot(*zip(*evals, strict=True), marker="o", label="validation loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (cross-entropy)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out.mkdir(parents=True, exist_ok=True)
    path = out / LOSS_CURVE
    fig.savefig(path)
    plt.close(fig)
    return path


def _fmt(value: Any) -> str:
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
    out.mkdir(parents=True, exist_ok=True)
    path = out / MODEL_CARD
    path.write_text(model_card(**kwargs), encoding="utf-8")
    return path
