"""loss_curve.png: the train and validation loss of a job against the optimizer step."""

from __future__ import annotations

from pathlib import Path
from typing import Any

LOSS_CURVE = "loss_curve.png"


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
