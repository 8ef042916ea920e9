"""Per-epoch weights kept as artifacts: the checkpoints OpenAI's API lists (`/v1/fine_tuning/jobs/{id}/checkpoints`).

At the end of every epoch but the last (the last epoch's weights are the job's own `adapter/` or `model/`), the
weights go under the job's output folder as `checkpoints/step-<N>/adapter/` (or `model/` for full fine-tuning); the
save phase publishes everything in that folder, these included, so they are downloadable like any artifact. Only the
newest KEEP_EPOCHS are kept (OpenAI keeps the final model and the two epochs before it). A LoRA to merge is saved
unmerged here: merging mid-run would fold the adapter into the weights being trained. Epoch weights live on the
worker's scratch until the job's artifacts are published: an attempt resumed elsewhere keeps those it saves itself.
These are apart from the resumable checkpoints (training/checkpoints.py), which are deleted when the job finishes.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from ftjobs.jobs.outputs.artifacts import name_the_base
from ftjobs.jobs.training.methods import save_weights

log = logging.getLogger("ftjobs.checkpoints")

KEEP_EPOCHS = 2
FOLDER = "checkpoints"


class EpochWeightsCallback(TrainerCallback):
    """Saves the weights at each epoch end (but the last) under `out/checkpoints/step-<N>/`."""

    def __init__(self, out: Path, method: Any, model_name: str) -> None:
        self.root = out / FOLDER
        self.method = method.model_copy(update={"merge": False}) if getattr(method, "merge", False) else method
        self.model_name = model_name  # the base as the tenant may see it: no server path in adapter_config.json

    def on_epoch_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, model: Any = None, **kw: Any
    ) -> None:
        if model is None or not state.is_world_process_zero or state.global_step == 0:
            return
        if state.max_steps and state.global_step >= state.max_steps:
            return  # the last epoch: its weights are the job's own
        folder = self.root / f"step-{state.global_step}"
        if folder.exists():
            return
        try:
            for written in save_weights(model, self.method, folder):
                name_the_base(folder / written, self.model_name)
        except Exception:  # a full disk costs this epoch's checkpoint, not the job
            log.warning("saving the weights of step %d failed", state.global_step, exc_info=True)
            shutil.rmtree(folder, ignore_errors=True)
            return
        kept = sorted((p for p in self.root.iterdir() if p.name.startswith("step-")), key=lambda p: int(p.name[5:]))
        for old in kept[:-KEEP_EPOCHS]:
            shutil.rmtree(old, ignore_errors=True)
