"""Resumable checkpoints: a lost attempt's successor goes on from the job's last checkpoint, not from step 0.

Tests set FTJOBS_CHECKPOINT_STEPS (a checkpoint every N optimizer steps) so where checkpoints fall does not
depend on the machine's speed; FTJOBS_CHECKPOINT_S (by time) is the production default.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    EarlyStoppingCallback,
    TrainerCallback,
    TrainerState,
    TrainingArguments,
    set_seed,
)

from ftjobs.client.models import JobCreate, Task
from ftjobs.core import keys
from ftjobs.core.storage import Storage
from ftjobs.jobs.data.examples import build_datasets
from ftjobs.jobs.data.read import Row
from ftjobs.jobs.evaluation.generation import Evaluator
from ftjobs.jobs.report import Reporter
from ftjobs.jobs.training import checkpoints
from ftjobs.jobs.training.methods import apply_method
from ftjobs.jobs.training.trainer import JobTrainer, PadCollator, ReportCallback
from tests.conftest import WorkerProcess
from tests.jobs.helpers import create_job, events, metric_points, read_job, store_root, submit, upload_rows, wait_for

TEXTS = [
    "what is the colour of the sky ? the sky is blue",
    "say hello . hello there , how are you ?",
    "count to three : one two three four five six",
    "what is the colour of grass ? grass is green",
    "the quick brown fox jumps over the lazy dog",
    "what is the colour of snow ? snow is white",
]
METHODS = {
    "full": {"type": "full"},
    "lora": {"type": "lora", "r": 4, "alpha": 8, "dropout": 0.1},
    "ia3": {"type": "ia3"},
    "prompt_tuning": {"type": "prompt_tuning", "num_virtual_tokens": 4},
    "prefix_tuning": {"type": "prefix_tuning", "num_virtual_tokens": 4},
    "p_tuning": {"type": "p_tuning", "num_virtual_tokens": 4, "encoder_hidden_size": 16},
    "adapter": {"type": "adapter", "bottleneck_size": 8, "dropout": 0.1},
}


class WorkerLost(Exception):
    """What a SIGKILL looks like from inside the training loop, in-process."""


class CrashAt(TrainerCallback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        if state.global_step == self.step:
            raise WorkerLost(f"lost at step {self.step}")


class Snapshot(TrainerCallback):
    """The trainable weights right after one optimizer step."""

    def __init__(self, step: int) -> None:
        self.step = step
        self.weights: dict[str, torch.Tensor] = {}

    def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, **kw: Any) -> None:
        if state.global_step == self.step:
            self.weights = _trainable(model)


def _method(spec: dict[str, Any]) -> Any:
    return JobCreate.model_validate({"model": "m", "training_file": "file-" + "0" * 20, "method": spec}).method


def _run(
    model_path: Path,
    method: str,
    work: Path,
    reporter: Reporter,
    store: Storage,
    every_steps: int = 0,
    crash_at: int | None = None,
    resume: bool = False,
    early_stopping: bool = False,
    callbacks: tuple[TrainerCallback, ...] = (),
    logging_steps: int = 1,
) -> tuple[Any, ReportCallback, checkpoints.Checkpoint | None]:
    """One attempt, wired as train_job wires it: seed, model + method, Trainer + callbacks, (resume,) train."""
    set_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    rows = [Row(i + 1, {"text": t}, "training_file") for i, t in enumerate(TEXTS)]
    validation = rows[:2] if early_stopping else None
    data = build_datasets(Task.causal_lm, tokenizer, rows, validation, 32, 0.0, 0)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    model.config.attention_dropout = 0.1  # randomness the RNG state must restore
    model = apply_method(model, _method(METHODS[method]), Task.causal_lm)
    evaluator = Evaluator(Task.causal_lm, tokenizer, [], limit=0, samples=0, max_seq_length=32)
    callback = ReportCallback(reporter, 1.0, causal=True)
    saver = checkpoints.CheckpointCallback(
        store, reporter, 0, every_steps, lambda: checkpoints.job_state(callback, None, None, evaluator)
    )
    extra: list[Any] = [*callbacks, *([CrashAt(crash_at)] if crash_at else [])]
    stopping: dict[str, Any] = {}
    if early_stopping:  # as train_job sets it up, but "best" = the highest loss: the best is an early step
        extra.append(EarlyStoppingCallback(early_stopping_patience=3))
        stopping = {
            "eval_strategy": "steps",
            "eval_steps": 2,
            "save_strategy": "steps",
            "save_steps": 2,
            "metric_for_best_model": "eval_loss",
            "greater_is_better": True,
            "load_best_model_at_end": True,
            "restore_callback_states_from_checkpoint": True,
        }
    args = TrainingArguments(
        output_dir=str(work / "trainer"),
        per_device_train_batch_size=2,
        num_train_epochs=3,  # 3 steps per epoch: a resume mid-epoch skips batches, one at an epoch start does not
        learning_rate=5e-3,
        seed=0,
        data_seed=0,
        logging_steps=logging_steps,
        save_total_limit=1,
        report_to="none",
        **{"save_strategy": "no", **stopping},
        disable_tqdm=True,
        remove_unused_columns=False,
        label_names=["labels"],
    )
    trainer = JobTrainer(
        model=model,
        args=args,
        train_dataset=data.train,
        eval_dataset=data.validation,
        data_collator=PadCollator(tokenizer.pad_token_id),
        callbacks=[saver, callback, *extra],
    )
    resumed = checkpoints.resume(store, reporter, work / "trainer", callback, evaluator) if resume else None
    try:
        trainer.train(resume_from_checkpoint=str(resumed.path) if resumed else None)
    except WorkerLost:
        pass
    return trainer, callback, resumed


def _attempt(redis, job_id: str, attempt: int) -> Reporter:  # type: ignore[no-untyped-def]
    reporter = Reporter(redis, "default", job_id, attempt)
    assert reporter.start("w")
    return reporter


def _lose(reporter: Reporter) -> Reporter:
    """What the reconciler does for a lost attempt; returns the next attempt, started."""
    assert reporter.requeue("worker lost")
    return _attempt(reporter.redis, reporter.job_id, reporter.attempt + 1)


def _trainable(model: Any) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("method", list(METHODS))
def test_a_resumed_run_ends_with_the_weights_of_an_uninterrupted_one(
    redis, env, tiny_causal_lm: Path, tmp_path: Path, method: str
) -> None:
    store = Storage(f"file://{tmp_path / 'store'}")
    request = JobCreate(model=str(tiny_causal_lm), training_file="file-" + "0" * 20)

    whole = create_job(redis, request, status="queued")
    reference, ref_callback, _ = _run(tiny_causal_lm, method, tmp_path / "a", _attempt(redis, whole, 1), store)
    assert reference.state.global_step == 9

    job_id = create_job(redis, request, status="queued")
    first = _attempt(redis, job_id, 1)
    lost, _, _ = _run(tiny_causal_lm, method, tmp_path / "b1", first, store, every_steps=2, crash_at=5)
    pointer = json.loads((tmp_path / "store" / keys.checkpoint_pointer_path("default", job_id)).read_text())
    assert (pointer["step"], pointer["attempt"]) == (4, 1)
    assert {"optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json", "job_state.json"} <= {
        name.split("/", 1)[1] for name in pointer["files"]
    }
    # The weights as the Trainer saves each method: the whole model (full), the trainable tensors and not the
    # frozen base (adapter), peft's adapter file, plus the whole prompt encoder where that file holds only the
    # encoder's output (p_tuning).
    folder = tmp_path / "store" / pointer["path"] / "checkpoint-4"
    if method in ("full", "adapter"):
        with safe_open(str(folder / "model.safetensors"), "pt") as weights:
            assert set(weights.keys()) == set(_trainable(lost.model))
    else:
        assert (folder / "adapter_model.safetensors").is_file()
    assert (folder / "prompt_encoder.safetensors").is_file() == (method == "p_tuning")
    uploads = os.listdir(tmp_path / "store" / keys.checkpoints_dir("default", job_id))
    assert sorted(uploads) == ["attempt-1-step-4", "latest.json"]  # step 2's upload is gone
    saved = [e["data"]["step"] for e in events(redis, job_id) if e["type"] == "checkpoint"]
    assert saved == [2, 4]

    second = _lose(first)
    trainer, callback, resumed = _run(
        tiny_causal_lm, method, tmp_path / "b2", second, store, every_steps=2, resume=True
    )
    assert resumed is not None and resumed.step == 4 and resumed.attempt == 1
    assert trainer.state.global_step == 9  # the planned total, not 4 more than planned

    # Step 4 is one batch into epoch 2: the Trainer skips that batch and restores the RNG state (dropout).
    want, got = _trainable(reference.model), _trainable(trainer.model)
    assert want.keys() == got.keys() and want
    for name in want:
        assert torch.equal(want[name], got[name]), name
    # The restored history plus this attempt's steps is the uninterrupted run's, step for step.
    assert [h["step"] for h in callback.train_history] == list(range(1, 10))
    assert [h["values"]["loss"] for h in callback.train_history] == [
        h["values"]["loss"] for h in ref_callback.train_history
    ]
    # The lost attempt's point at step 5 is gone from the stream; 5 is there once, from attempt 2.
    steps = [p["step"] for p in metric_points(redis, job_id) if p["split"] == "train"]
    assert steps == list(range(1, 10))


def test_a_resumed_runs_train_loss_is_the_mean_over_all_its_steps(
    redis, env, tiny_causal_lm: Path, tmp_path: Path
) -> None:
    store = Storage(f"file://{tmp_path / 'store'}")
    request = JobCreate(model=str(tiny_causal_lm), training_file="file-" + "0" * 20)
    whole = create_job(redis, request, status="queued")
    reference, _, _ = _run(tiny_causal_lm, "lora", tmp_path / "a", _attempt(redis, whole, 1), store)
    want = reference.state.log_history[-1]["train_loss"]  # the Trainer's: the mean of the 9 steps' losses

    job_id = create_job(redis, request, status="queued")
    first = _attempt(redis, job_id, 1)
    _run(tiny_causal_lm, "lora", tmp_path / "b1", first, store, every_steps=4, crash_at=5, logging_steps=3)
    trainer, callback, resumed = _run(
        tiny_causal_lm, "lora", tmp_path / "b2", _lose(first), store, every_steps=4, resume=True, logging_steps=3
    )
    assert resumed is not None and resumed.step == 4
    # Logged windows: every 3 steps, and at each checkpoint (4, 8); without the log at 4, the loss of step 4 would
    # be nowhere: attempt 1 logged up to 3, attempt 2 starts after 4.
    assert [h["step"] for h in callback.train_history] == [3, 4, 6, 8, 9]
    own = trainer.state.log_history[-1]["train_loss"]  # the Trainer's on a resumed run: steps 5-9 only
    got = checkpoints.run_train_loss(callback.train_history, resumed, own, trainer.state.global_step)
    # Same step losses (the resumed steps are the uninterrupted run's), summed in other groups: float32 rounding.
    assert got == pytest.approx(want, rel=1e-6)
    assert own != pytest.approx(want, rel=1e-3)


# p_tuning: peft saves its prompt encoder's output only; adapter: its checkpoints hold the trainable tensors only.
@pytest.mark.parametrize("method", ["lora", "p_tuning", "adapter"])
def test_early_stopping_resumes_with_its_best_checkpoint_and_patience(
    redis, env, tiny_causal_lm: Path, tmp_path: Path, method: str
) -> None:
    store = Storage(f"file://{tmp_path / 'store'}")
    request = JobCreate(model=str(tiny_causal_lm), training_file="file-" + "0" * 20)
    whole = create_job(redis, request)
    first_run = _attempt(redis, whole, 1)
    best = Snapshot(2)
    reference, _, _ = _run(
        tiny_causal_lm, method, tmp_path / "a", first_run, store, early_stopping=True, callbacks=(best,)
    )
    # Evaluations at 2, 4, 6, 8: the best stays at 2, patience 3 runs out at 8 (of 9 planned steps).
    assert (reference.state.best_global_step, reference.state.global_step) == (2, 8)
    ended = _trainable(reference.model)  # the best weights reloaded at the end: step 2's, every tensor of them
    assert ended.keys() == best.weights.keys() and ended
    for name in ended:
        assert torch.equal(ended[name], best.weights[name]), name

    job_id = create_job(redis, request)
    first = _attempt(redis, job_id, 1)
    _run(tiny_causal_lm, method, tmp_path / "b1", first, store, every_steps=3, crash_at=7, early_stopping=True)
    pointer = json.loads((tmp_path / "store" / keys.checkpoint_pointer_path("default", job_id)).read_text())
    assert (pointer["step"], pointer["best_step"]) == (6, 2)
    weights = "model.safetensors" if method == "adapter" else "adapter_model.safetensors"  # adapter: trainable only
    assert f"checkpoint-2/{weights}" in pointer["files"]
    assert "checkpoint-2/optimizer.pt" not in pointer["files"]  # the best's weights only

    second = _lose(first)
    trainer, _, resumed = _run(
        tiny_causal_lm, method, tmp_path / "b2", second, store, every_steps=3, resume=True, early_stopping=True
    )
    assert resumed is not None and resumed.step == 6
    # The patience counter came back (else it would train step 9), and the best weights were reloaded.
    assert (trainer.state.best_global_step, trainer.state.global_step) == (2, 8)
    assert trainer.state.best_model_checkpoint == str(tmp_path / "b2" / "trainer" / "checkpoint-2")
    want, got = _trainable(reference.model), _trainable(trainer.model)
    for name in want:
        assert torch.equal(want[name], got[name]), name


def test_a_corrupt_checkpoint_is_never_used(redis, env, tiny_causal_lm: Path, tmp_path: Path) -> None:
    store = Storage(f"file://{tmp_path / 'store'}")
    job_id = create_job(redis, JobCreate(model=str(tiny_causal_lm), training_file="file-" + "0" * 20))
    first = _attempt(redis, job_id, 1)
    _run(tiny_causal_lm, "lora", tmp_path / "a", first, store, every_steps=2, crash_at=3)
    pointer = json.loads((tmp_path / "store" / keys.checkpoint_pointer_path("default", job_id)).read_text())
    optimizer = tmp_path / "store" / pointer["path"] / "checkpoint-2" / "optimizer.pt"
    optimizer.write_bytes(optimizer.read_bytes()[:100])  # a partial upload under a committed pointer

    second = _lose(first)
    trainer, callback, resumed = _run(tiny_causal_lm, "lora", tmp_path / "b", second, store, resume=True)
    assert resumed is None and trainer.state.global_step == 9
    warning = [e for e in events(redis, job_id) if e["level"] == "warning" and e["type"] == "checkpoint"]
    assert len(warning) == 1 and "optimizer.pt does not match" in warning[0]["message"], warning
    assert "starting from step 0" in warning[0]["message"]
    assert not (tmp_path / "store" / keys.checkpoints_dir("default", job_id)).exists()
    # Attempt 1's points are history that did not happen: only attempt 2's steps 1..9, once each.
    assert [p["step"] for p in metric_points(redis, job_id)] == list(range(1, 10))


def test_only_the_current_attempt_writes_a_checkpoint(redis, env, tiny_causal_lm: Path, tmp_path: Path) -> None:
    store = Storage(f"file://{tmp_path / 'store'}")
    job_id = create_job(redis, JobCreate(model=str(tiny_causal_lm), training_file="file-" + "0" * 20))
    stale = _attempt(redis, job_id, 1)
    _lose(stale)  # attempt 2 owns the job; attempt 1 has not noticed yet
    _run(tiny_causal_lm, "lora", tmp_path / "a", stale, store, every_steps=2, crash_at=3)
    assert not (tmp_path / "store" / keys.checkpoints_dir("default", job_id)).exists()
    assert not [e for e in events(redis, job_id) if e["type"] == "checkpoint"]


def test_when_checkpoints_are_due(redis, env, tiny_causal_lm: Path, tmp_path: Path) -> None:
    from ftjobs.core.settings import Settings

    assert (Settings.from_env({}).checkpoint_s, Settings.from_env({}).checkpoint_steps) == (600, 0)
    off = Settings.from_env({"FTJOBS_CHECKPOINT_S": "0"})
    reporter, store = Reporter(redis, "default", "j", 1), Storage(f"file://{tmp_path}")
    assert not checkpoints.CheckpointCallback(store, reporter, off.checkpoint_s, off.checkpoint_steps, dict).enabled

    by_time = checkpoints.CheckpointCallback(store, reporter, 0.2, 0, dict)
    state = TrainerState(global_step=3, max_steps=10)
    by_time.on_train_begin(None, TrainerState(global_step=0), None)  # type: ignore[arg-type]
    assert not by_time.due(state)
    time.sleep(0.25)
    assert by_time.due(state)
    assert not by_time.due(TrainerState(global_step=10, max_steps=10))  # the last step: the job ends anyway

    by_steps = checkpoints.CheckpointCallback(store, reporter, 0, 4, dict)
    by_steps.on_train_begin(None, TrainerState(global_step=4), None)  # type: ignore[arg-type]  # resumed at 4
    due = [step for step in range(1, 11) if by_steps.due(TrainerState(global_step=step, max_steps=10))]
    assert due == [8]


# ----------------------------------------------------------------------------- real workers, a real SIGKILL

ROWS = [{"prompt": f"count to {n} :", "completion": " ".join(str(i) for i in range(1, n + 1))} for n in range(1, 9)]


def _kill_machine(worker: WorkerProcess) -> None:
    """SIGKILL the worker and its work horse (RQ puts the horse in its own process group), as a lost machine."""
    pid = worker.proc.pid
    horses = [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    os.kill(pid, signal.SIGKILL)
    for horse in horses:
        os.killpg(horse, signal.SIGKILL)
    worker.proc.wait(10)


def test_a_lost_attempt_resumes_from_its_last_checkpoint(redis, env, tiny_causal_lm: Path, tmp_path: Path) -> None:
    env = {
        **env,
        "FTJOBS_CHECKPOINT_STEPS": "10",
        "FTJOBS_HEARTBEAT_S": "0.5",
        "FTJOBS_STALE_AFTER_S": "2",
    }
    request = JobCreate(
        model=str(tiny_causal_lm),
        training_file=upload_rows(env, ROWS),
        validation_file=upload_rows(env, ROWS[:4]),
        method={"type": "lora", "r": 4, "alpha": 8},
        hyperparameters={"batch_size": 1, "max_steps": 80, "eval_steps": 40, "max_seq_length": 32},
    )
    first = WorkerProcess(env, tmp_path / "first.log")
    try:
        job_id = submit(redis, env, request)
        deadline = time.monotonic() + 90
        while not [e for e in events(redis, job_id) if e["type"] == "checkpoint"]:
            assert time.monotonic() < deadline and first.proc.poll() is None, first.output()[-3000:]
            time.sleep(0.05)
        _kill_machine(first)
    finally:
        first.stop()
    lost = read_job(redis, job_id)
    assert lost["status"] == "running" and lost["attempt"] == 1 and lost["progress"]["step"] < 80
    baseline = [p for p in metric_points(redis, job_id) if p["split"] == "eval" and p["step"] == 0]

    second = WorkerProcess(env, tmp_path / "second.log")
    try:
        job = wait_for(redis, job_id, worker=second, timeout=120)
    finally:
        second.stop()
    assert job["status"] == "succeeded" and job["attempt"] == 2, (job, second.output()[-3000:])
    resumed = [e for e in events(redis, job_id) if "resumed_from_step" in e["data"]]
    assert len(resumed) == 1, events(redis, job_id)
    step = resumed[0]["data"]["resumed_from_step"]
    assert step > 0 and step % 10 == 0
    assert resumed[0]["message"] == f"resuming from checkpoint at step {step} (saved by attempt 1)"
    assert job["results"]["resumed_from_step"] == job["resolved"]["resumed_from_step"] == step
    assert job["results"]["steps"] == job["resolved"]["total_steps"] == 80  # the plan, not more
    # The baseline was measured once, by attempt 1, and attempt 2's results carry it.
    assert job["results"]["baseline"]["eval_loss"] == pytest.approx(baseline[0]["values"]["loss"])
    assert "bleu" in job["results"]["baseline"]  # the generation pass of attempt 1, restored

    # One history: every logged train step once, in order; no eval point twice.
    points = metric_points(redis, job_id)
    assert [p["step"] for p in points if p["split"] == "train"] == list(range(1, 81))
    evals = [(p["step"], tuple(sorted(p["values"]))) for p in points if p["split"] == "eval"]
    assert len(evals) == len(set(evals)) and [s for s, _ in evals if s == 0] == [0, 0]  # loss + generation
    assert {s for s, _ in evals} == {0, 40, 80}

    store = store_root(env)
    assert not (store / keys.checkpoints_dir("default", job_id)).exists()
    assert {a["name"] for a in job["artifacts"]} >= {"adapter/adapter_model.safetensors", "metrics.json"}
    history = json.loads((store / keys.artifact_path("default", job_id, "metrics.json")).read_text())["history"]
    assert [h["step"] for h in history["train"]] == list(range(1, 81))

    # The results describe the whole run. logging_steps is 1 here: each logged loss is one step's, and their mean is
    # what the Trainer of an uninterrupted run reports (its sum of step losses / steps; the resumed steps are an
    # uninterrupted run's, see above). rel=1e-5: float32 step losses, summed in other groups (observed: ~1e-7).
    losses = [h["values"]["loss"] for h in history["train"]]
    assert job["results"]["train_loss"] == pytest.approx(sum(losses) / 80, rel=1e-5)
    own = losses[step:]  # what the Trainer reports of attempt 2: its own steps only (observed: 0.3% off at step 10)
    assert sum(own) / len(own) != pytest.approx(job["results"]["train_loss"], rel=1e-4)
    # Attempt 1's seconds up to its checkpoint, then attempt 2's (its progress: from train begin to train end).
    carried = resumed[0]["data"]["train_seconds"]
    assert carried > 0
    assert job["results"]["train_seconds"] >= carried + job["progress"]["elapsed_seconds"] > carried


def test_a_job_the_reconciler_ends_leaves_no_checkpoints(redis, env, tiny_causal_lm: Path) -> None:
    from ftjobs.core.settings import Settings
    from ftjobs.jobs.reconcile import Reconciler

    settings = Settings.from_env({**env, "FTJOBS_MAX_ATTEMPTS": "1"})
    job_id = create_job(redis, JobCreate(model=str(tiny_causal_lm), training_file="file-" + "0" * 20), status="running")
    redis.zadd(keys.HEARTBEATS_KEY, {keys.heartbeat_member("default", job_id, 1): time.time() - 600})
    saved = store_root(env) / keys.checkpoint_path("default", job_id, 1, 10) / "checkpoint-10" / "optimizer.pt"
    saved.parent.mkdir(parents=True)
    saved.write_bytes(b"x")

    assert Reconciler(redis, settings).sweep_leases(time.time()) == 1
    job = read_job(redis, job_id)
    assert job["status"] == "failed" and job["error"]["code"] == "worker_lost"
    assert not (store_root(env) / keys.checkpoints_dir("default", job_id)).exists()
