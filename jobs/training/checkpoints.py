"""Resumable checkpoints of a running job in the artifact store, and resuming a new attempt from them.

Every `checkpoint_s` seconds (FTJOBS_CHECKPOINT_S, default 600; 0: never by time) and every
`checkpoint_steps` optimizer steps (FTJOBS_CHECKPOINT_STEPS, default 0: never by steps) the callback asks
the Trainer to save (`control.should_save`; the Trainer then writes `checkpoint-<step>` in its output_dir:
weights or adapter, optimizer.pt, scheduler.pt, rng_state.pth, trainer_state.json, whatever save_strategy
says) and uploads that folder plus `job_state.json` (our own state: metric histories, baseline results) to
`checkpoint_path(...)`. Then it writes `latest.json` (step, attempt, path, every file's size and sha256),
the commit: an upload that latest.json does not name is never used, and a file whose size or sha256
differs makes the whole checkpoint unusable (the attempt starts from step 0, with a warning event).

A pause (`pause_requested` on the record, polled every PAUSE_POLL_S at step ends) saves a checkpoint at that step
end, checkpoints configured or not, and stops the run with `Paused` (jobs/interrupts.py); the resumed job's next
attempt continues from it like a preempted one.

Under early stopping the best checkpoint's weights (not its optimizer) go along, so a resumed run still
ends with the best weights. Checkpoints are deleted when the job finishes; the final artifacts are apart.

A resumed run's results describe the whole run: `train_seconds` adds the seconds the earlier attempts trained up
to the checkpoint (job_state.json; the work a lost attempt did after its last checkpoint is lost and not counted),
and `train_loss` is the mean over every step (`run_train_loss`). The Trainer also logs at every checkpoint step,
so the logged loss windows (each the mean over the steps since the previous log) tile the run up to it.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from ftjobs.client.models import EventLevel, EventType
from ftjobs.core.keys import checkpoint_path, checkpoint_pointer_path, checkpoints_dir
from ftjobs.core.storage import Storage, remove_checkpoints
from ftjobs.jobs.data.inputs import short
from ftjobs.jobs.interrupts import INTERRUPTER, Paused, Preempted
from ftjobs.jobs.outputs.artifacts import sha256_file
from ftjobs.jobs.report import Reporter

log = logging.getLogger("ftjobs.checkpoints")

JOB_STATE = "job_state.json"  # inside the uploaded checkpoint folder, next to trainer_state.json
TRAINER_STATE = "trainer_state.json"
TRAINING_STATE_FILES = ("optimizer.pt", "scheduler.pt", "scaler.pt", "rng_state")  # prefixes: not needed for best
PAUSE_POLL_S = 0.25  # seconds between looks for a pause request (one HGET, at a step end)


@dataclass
class Checkpoint:
    """A verified checkpoint downloaded to scratch: pass `path` to `trainer.train(resume_from_checkpoint=)`."""

    step: int
    attempt: int  # the attempt that saved it
    path: Path
    state: dict[str, Any]  # job_state.json
    baseline: dict[str, Any] | None = None  # results["baseline"] as the first attempt measured it
    baseline_predictions: Any = None  # (true, predicted) class ids before training (classification)


class CheckpointCallback(TrainerCallback):
    """Asks the Trainer for a checkpoint when one is due, uploads it, then commits it with latest.json."""

    def __init__(
        self,
        store: Storage,
        reporter: Reporter,
        every_s: float,
        every_steps: int,
        job_state: Callable[[], dict[str, Any]],
    ) -> None:
        self.store = store
        self.reporter = reporter
        self.every_s = every_s  # seconds between checkpoints (0: not by time)
        self.every_steps = every_steps  # optimizer steps between checkpoints (0: not by steps)
        self.job_state = job_state  # what train_job needs besides the Trainer's state to finish after a resume
        self._last = time.monotonic()
        self._saved_step = -1
        self._pause_polled = 0.0  # monotonic time of the last look for a pause request

    @property
    def enabled(self) -> bool:
        return self.every_s > 0 or self.every_steps > 0

    def due(self, state: TrainerState) -> bool:
        pausing = INTERRUPTER.pause.is_set()  # a pause always saves: the job resumes from here
        if not (self.enabled or pausing) or state.global_step <= max(self._saved_step, 0):
            return False
        if state.max_steps and state.global_step >= state.max_steps:
            return False  # training is over: the job's own artifacts come next, a resume would train nothing
        if INTERRUPTER.preempt.is_set() or pausing:
            return True  # the worker is stopping, or a pause: save what this attempt trained, then hand the job back
        by_steps = self.every_steps > 0 and state.global_step % self.every_steps == 0
        by_time = self.every_s > 0 and time.monotonic() - self._last >= self.every_s
        return by_steps or by_time

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any) -> None:
        self._last = time.monotonic()
        self._saved_step = state.global_step  # a resumed run already has this one
        INTERRUPTER.checkpointable = True  # a preemption now waits for the step end (and this checkpoint)

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any) -> None:
        INTERRUPTER.checkpointable = False

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any) -> None:
        self._look_for_pause()
        if self.due(state):
            control.should_save = control.should_log = True  # the log: the loss up to here is in job_state.json
        elif INTERRUPTER.preempt.is_set() and not (state.max_steps and state.global_step >= state.max_steps):
            self._hand_back(state)  # no checkpoints configured: stop at this step end all the same

    def on_epoch_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any) -> None:
        if self.due(state):
            control.should_save = control.should_log = True

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any) -> None:
        # The Trainer also saves for its own reasons (early stopping's evaluations): upload only when due.
        folder = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        if not self.due(state) or (state.is_world_process_zero and not folder.is_dir()):
            return
        if state.is_world_process_zero:  # rank 0 uploads; every rank marks the step saved below (see the end)
            try:
                self.upload(folder, state)
            except Exception as e:  # a store outage costs this checkpoint, not the job
                log.warning("checkpoint at step %d failed", state.global_step, exc_info=True)
                self.reporter.event(
                    f"checkpoint at step {state.global_step} failed: {type(e).__name__}: {short(e)}",
                    level=EventLevel.warning,
                    type=EventType.checkpoint,
                    data={"step": state.global_step, "attempt": self.reporter.attempt},
                )
        # On every rank: a rank that did not mark it would find the same step due again at the epoch's end and
        # save alone (under FSDP a save is a collective: the ranks' collectives would no longer match).
        self._last = time.monotonic()
        self._saved_step = state.global_step
        if INTERRUPTER.preempt.is_set() or INTERRUPTER.pause.is_set():
            self._hand_back(state)

    def _look_for_pause(self) -> None:
        """Every PAUSE_POLL_S: has the API asked this job to pause? (A Redis blip: the next look retries.)"""
        if INTERRUPTER.pause.is_set() or time.monotonic() - self._pause_polled < PAUSE_POLL_S:
            return
        self._pause_polled = time.monotonic()
        try:
            if self.reporter.pause_requested():
                INTERRUPTER.pause.set()
        except Exception:
            log.warning("could not look for a pause request", exc_info=True)

    def _hand_back(self, state: TrainerState) -> None:
        """Preempted: stop at this step end; the worker requeues the job, which resumes from the last checkpoint.
        Paused: the same stop; train.py then moves the job to `paused`."""
        INTERRUPTER.acknowledge()
        if INTERRUPTER.pause.is_set():
            raise Paused(state.global_step, self._saved_step)
        self.reporter.event(
            f"the worker is stopping: handing the job back at step {state.global_step}",
            level=EventLevel.warning,
            data={"step": state.global_step, "checkpoint_step": self._saved_step, "attempt": self.reporter.attempt},
        )
        raise Preempted(f"preempted at step {state.global_step}")

    def upload(self, folder: Path, state: TrainerState) -> None:
        """Upload `folder` (+ job_state.json, + the best weights), then latest.json, then drop older uploads."""
        r = self.reporter
        if r.cancel_requested():
            return  # cancelled, or a newer attempt owns the job: not ours to write
        started = time.monotonic()
        (folder / JOB_STATE).write_text(json.dumps(self.job_state()))
        rel = checkpoint_path(r.tenant, r.job_id, r.attempt, state.global_step)
        files = _upload_files(self.store, folder, rel, folder.name)
        best = Path(state.best_model_checkpoint) if state.best_model_checkpoint else None
        best_step = checkpoint_step(str(best)) if best else None
        if best and best.resolve() != folder.resolve() and best.is_dir():
            files.update(_upload_files(self.store, best, rel, best.name, weights_only=True))
        if r.cancel_requested():  # lost the job during the upload: the upload is garbage, the pointer not ours
            self.store.delete(rel)
            return
        size = sum(f["bytes"] for f in files.values())
        pointer = {
            "step": state.global_step,
            "attempt": r.attempt,
            "path": rel,
            "folder": folder.name,
            "best_step": best_step,
            "files": files,
            "bytes": size,
            "created_at": time.time(),
        }
        self.store.write_json(checkpoint_pointer_path(r.tenant, r.job_id), pointer)  # the commit
        _remove_others(self.store, r.tenant, r.job_id, keep=rel)
        seconds = round(time.monotonic() - started, 3)
        r.event(
            f"checkpoint at step {state.global_step} saved ({size / 1e6:.3g} MB in {seconds:g} s)",
            type=EventType.checkpoint,
            data={"step": state.global_step, "attempt": r.attempt, "bytes": size, "seconds": seconds},
        )


def resume(store: Storage, reporter: Reporter, output_dir: Path, callback: Any, evaluator: Any) -> Checkpoint | None:
    """Before training: the job's latest usable checkpoint with our state restored into the ReportCallback
    and the Evaluator, or None (start at step 0). Either way the metric points a lost attempt wrote past the
    starting step are deleted: that history did not happen (the events keep what the lost attempt did)."""
    checkpoint = fetch(store, reporter, output_dir)
    if checkpoint is None:
        if reporter.attempt > 1:
            reporter.drop_metrics_after(-1)
        return None
    reporter.drop_metrics_after(checkpoint.step)
    checkpoint.baseline, checkpoint.baseline_predictions = restore(checkpoint.state, callback, evaluator)
    reporter.resolved({"resumed_from_step": checkpoint.step, "resumed_from_attempt": checkpoint.attempt})
    reporter.event(
        f"resuming from checkpoint at step {checkpoint.step} (saved by attempt {checkpoint.attempt})",
        type=EventType.checkpoint,
        data={
            "resumed_from_step": checkpoint.step,
            "saved_by_attempt": checkpoint.attempt,
            "train_seconds": callback.earlier_seconds,  # the earlier attempts' training, up to the checkpoint
        },
    )
    return checkpoint


def fetch(store: Storage, reporter: Reporter, output_dir: Path) -> Checkpoint | None:
    """The job's latest checkpoint, downloaded into the Trainer's output_dir and verified; None when there is
    none, or (with a warning event) when it is unusable: then it is deleted and the attempt starts at step 0."""
    pointer_rel = checkpoint_pointer_path(reporter.tenant, reporter.job_id)
    if not store.exists(pointer_rel):
        return None
    step = attempt = None
    try:
        with store.fs.open(store.path(pointer_rel)) as fh:
            pointer = json.load(fh)
        step, attempt, folder = int(pointer["step"]), int(pointer["attempt"]), str(pointer["folder"])
        for name, meta in pointer["files"].items():
            local = output_dir / name
            if not local.resolve().is_relative_to(output_dir.resolve()):
                raise ValueError(f"{name} is outside the checkpoint")
            store.download(f"{pointer['path']}/{name}", local)
            if local.stat().st_size != meta["bytes"] or sha256_file(local) != meta["sha256"]:
                raise ValueError(f"{name} does not match latest.json (partial or corrupt upload)")
        path = output_dir / folder
        state = json.loads((path / JOB_STATE).read_text())
        trainer_state = json.loads((path / TRAINER_STATE).read_text())
        if trainer_state.get("global_step") != step:
            raise ValueError(f"{TRAINER_STATE} is at step {trainer_state.get('global_step')}, not {step}")
    except Exception as e:
        where = f" at step {step} (attempt {attempt})" if step is not None else ""
        reporter.event(
            f"checkpoint{where} is unusable ({type(e).__name__}: {short(e)}); starting from step 0",
            level=EventLevel.warning,
            type=EventType.checkpoint,
            data={"step": step, "attempt": attempt},
        )
        shutil.rmtree(output_dir, ignore_errors=True)
        if not reporter.cancel_requested():
            remove_checkpoints(store, reporter.tenant, reporter.job_id)
        return None
    # The best checkpoint (early stopping) now lives in this scratch folder, not the lost attempt's.
    best_step = pointer.get("best_step")
    if trainer_state.get("best_model_checkpoint") and best_step is not None:
        trainer_state["best_model_checkpoint"] = str(output_dir / f"{PREFIX_CHECKPOINT_DIR}-{best_step}")
        (path / TRAINER_STATE).write_text(json.dumps(trainer_state, indent=2, sort_keys=True))
    return Checkpoint(step=step, attempt=attempt, path=path, state=state)


def checkpoint_step(path: str | None) -> int | None:
    """The step of a Trainer checkpoint folder (`.../checkpoint-120`)."""
    tail = path.rstrip("/").rsplit("-", 1)[-1] if path else ""
    return int(tail) if tail.isdigit() else None


# ----------------------------------------------------------------------------- our state next to the Trainer's


def job_state(
    callback: Any, baseline: dict[str, Any] | None, baseline_predictions: Any, evaluator: Any
) -> dict[str, Any]:
    """What train_job keeps in memory between the baseline and the end (ReportCallback, Evaluator, keeper)."""
    return {
        "train_history": callback.train_history,
        "eval_history": callback.eval_history,
        "baseline": baseline,
        "baseline_predictions": baseline_predictions,  # (true, predicted) class ids: the bias report's "before"
        "baseline_samples": evaluator.predictions.get("baseline"),
        "train_seconds": round(callback.train_seconds, 3),  # every attempt's so far, up to this checkpoint
    }


def restore(state: dict[str, Any], callback: Any, evaluator: Any) -> tuple[dict[str, Any] | None, Any]:
    """Put job_state.json back; returns (the baseline results, the baseline predictions)."""
    callback.train_history = list(state.get("train_history") or [])
    callback.eval_history = list(state.get("eval_history") or [])
    callback.earlier_seconds = float(state.get("train_seconds") or 0.0)
    if state.get("baseline_samples") is not None:
        evaluator.predictions["baseline"] = state["baseline_samples"]
    predictions = state.get("baseline_predictions")
    return state.get("baseline"), tuple(predictions) if predictions else None


def run_train_loss(history: list[dict[str, Any]], resumed: Checkpoint | None, attempt_loss: float, step: int) -> float:
    """The mean training loss over every step of the run, up to `step` (where training ended).

    `attempt_loss` is the Trainer's `output.training_loss`: the mean over the steps of this train() call only, which
    on a resumed run starts at the checkpoint. The earlier steps come from the logged losses up to the checkpoint,
    each the mean over the steps since the previous log, weighted by those steps (they tile the run up to the
    checkpoint: CheckpointCallback logs there); a window without a finite loss is left out of the mean."""
    if resumed is None:
        return float(attempt_loss)
    total = steps = 0.0
    previous = 0
    for point in history:
        if point["step"] > resumed.step:
            break
        window, previous = point["step"] - previous, point["step"]
        if "loss" in point["values"]:
            total, steps = total + point["values"]["loss"] * window, steps + window
    trained = step - resumed.step
    total, steps = total + float(attempt_loss) * trained, steps + trained
    return total / steps if steps else float(attempt_loss)


# ----------------------------------------------------------------------------- files


def _upload_files(store: Storage, folder: Path, rel: str, prefix: str, weights_only: bool = False) -> dict[str, Any]:
    """Upload every file under `folder` to `rel/prefix/...`; returns {prefix/name: {bytes, sha256}}."""
    files = {}
    for local in sorted(p for p in folder.rglob("*") if p.is_file()):
        if weights_only and local.name.startswith(TRAINING_STATE_FILES):
            continue
        name = f"{prefix}/{local.relative_to(folder).as_posix()}"
        files[name] = {"bytes": local.stat().st_size, "sha256": sha256_file(local)}
        store.upload(local, f"{rel}/{name}")
    return files


def _remove_others(store: Storage, tenant: str, job_id: str, keep: str) -> None:
    """Delete the uploads other than `keep` (older checkpoints, a lost attempt's partial ones)."""
    directory = checkpoints_dir(tenant, job_id)
    kept = {_name(keep), _name(checkpoint_pointer_path(tenant, job_id))}
    for name in store.names(directory):
        if name not in kept:
            store.delete(f"{directory}/{name}")


def _name(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1]
