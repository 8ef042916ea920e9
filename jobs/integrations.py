"""Experiment trackers (TensorBoard, W&B, MLflow) as the Trainer's `report_to`, with their logs kept locally."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from pathlib import Path

from jobs.errors import IntegrationUnavailable

PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}


def installed(name: str) -> bool:
    return importlib.util.find_spec(PACKAGES[name]) is not None


def check(requested: Sequence[str]) -> None:
    """Fail the job (before any work) if a requested tracker is not installed in this worker."""
    missing = [name for name in requested if not installed(name)]
    if missing:
        raise IntegrationUnavailable(
            f"integrations {missing} requested but not installed in the worker "
            f"(pip install {' '.join(PACKAGES[m] for m in missing)}); remove them from `integrations`",
            param="integrations",
        )


def report_to(requested: Sequence[str], out: Path) -> list[str]:
    """The Trainer's report_to; logs go under `out` (so they become artifacts). TensorBoard is on if installed."""
    names = list(dict.fromkeys([*requested, *(["tensorboard"] if installed("tensorboard") else [])]))
    if "tensorboard" in names:
        os.environ["TENSORBOARD_LOGGING_DIR"] = str(out / "tensorboard")
    if "wandb" in names:
        os.environ["WANDB_MODE"] = "offline"  # no network from a worker; `wandb sync` the folder later
        os.environ["WANDB_DIR"] = str(out)
    if "mlflow" in names:
        os.environ["MLFLOW_TRACKING_URI"] = (out / "mlruns").resolve().as_uri()
    return names
