"""loss_curve.png: a job's train loss (smoothed), validation loss and task metric against the optimizer step."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ftjobs.jobs.evaluation.diagnostics import points, smoothed

LOSS_CURVE = "loss_curve.png"
RAW_ALPHA = 0.25  # the logged train losses, faint behind their rolling median


def write_loss_curve(
    out: Path,
    history: dict[str, list[dict[str, Any]]],
    *,
    title: str | None = None,
    metric: str = "loss",
) -> Path | None:
    """Train loss (raw faint, rolling median bold), validation loss and, on a second y axis, the task `metric`
    (when it is not the loss) against the optimizer step; `title`: e.g. the job id and task. matplotlib, no display."""
    train = points(history.get("train", []), "loss")
    evals = points(history.get("eval", []), "loss")
    scores = points(history.get("eval", []), metric) if metric != "loss" else []
    if not train and not evals:
        return None
    import matplotlib

    matplotlib.use("Agg")  # no display in a worker
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    lines = []
    if train:
        steps, values = zip(*train, strict=True)
        ax.plot(steps, values, color="tab:blue", alpha=RAW_ALPHA, linewidth=1)
        lines += ax.plot(steps, smoothed(values), color="tab:blue", label="train loss (rolling median)")
    if evals:
        lines += ax.plot(*zip(*evals, strict=True), color="tab:orange", marker="o", label="validation loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (cross-entropy)")
    ax.grid(alpha=0.3)
    if scores:
        right = ax.twinx()
        lines += right.plot(
            *zip(*scores, strict=True), color="tab:green", marker="s", linestyle="--", label=f"validation {metric}"
        )
        right.set_ylabel(metric)
    # below the axes: inside, it hides a curve that ends where the legend sits
    ax.legend(lines, [str(line.get_label()) for line in lines], loc="upper center", bbox_to_anchor=(0.5, -0.14),
              ncol=len(lines), frameon=False)  # fmt: skip
    if title:
        ax.set_title(title, fontsize=10)
    out.mkdir(parents=True, exist_ok=True)
    path = out / LOSS_CURVE
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return path
