"""One job sharded across two processes (FSDP2 with gloo on CPU, `resources.sharding: fsdp`).

A real worker, a real Redis, the tiny causal LM fully fine-tuned, with validation data (a baseline evaluation runs
before training and a final one after). The FSDP job's per-step train losses and its evaluations match the DDP
job's at the same batches (same seed, no dropout); its rank 0 held about half of the parameters; the full
weights it gathered and saved load with transformers and equal the DDP job's. A rank killed after a checkpoint
saved under FSDP sends the job back to its queue, and the next attempt resumes every rank from that checkpoint.
On a machine with two GPUs or more (bench/gpu_check.sh runs this file there) the same tests run with NCCL.
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

from ftjobs.client.models import FullMethod, Hyperparameters, JobCreate
from ftjobs.client.models.resources import Resources
from ftjobs.core.keys import artifact_path, checkpoint_pointer_path
from tests.conftest import WorkerProcess
from tests.jobs.helpers import events, guarded_write, store_root, submit, upload_rows, wait_for
from tests.jobs.test_distributed import ROWS, processes_of, rank_process, train_losses

pytestmark = pytest.mark.timeout(600)
GPUS = 1 if torch.cuda.device_count() >= 2 else 0  # NCCL with a GPU per rank where two are seen, else gloo
ENDED = ["succeeded", "failed", "cancelled"]
TOLERANCE = 1e-4  # |loss(FSDP) - loss(DDP)| per step: the same sums, reduced in another order (measured: below 2e-6)


def request(model: Path, env: dict[str, str], sharding: str, **hp: Any) -> JobCreate:
    hyperparameters = {"n_epochs": 2, "batch_size": 4, "max_seq_length": 32, "validation_split": 0.0,
                       "learning_rate": 1e-3, **hp}  # fmt: skip
    return JobCreate(model=str(model), training_file=upload_rows(env, ROWS), method=FullMethod(),
                     validation_file=upload_rows(env, ROWS[:6]),  # evaluations before, during, after training
                     hyperparameters=Hyperparameters(**hyperparameters), eval_generation_limit=0,
                     resources=Resources(processes=2, sharding=sharding, gpus_per_process=GPUS))  # fmt: skip


def weights(env: dict[str, str], job_id: str) -> dict[str, torch.Tensor]:
    return weights_of_folder(store_root(env) / artifact_path("default", job_id, "model"))


def test_fsdp_matches_ddp_and_saves_the_full_model(redis, env, worker, tiny_causal_lm: Path) -> None:
    sharded = submit(redis, env, request(tiny_causal_lm, env, "fsdp"))
    replicated = submit(redis, env, request(tiny_causal_lm, env, "ddp"))
    fsdp = wait_for(redis, sharded, timeout=400, worker=worker)
    ddp = wait_for(redis, replicated, timeout=400, worker=worker)
    assert fsdp["status"] == ddp["status"] == "succeeded", (fsdp.get("error"), ddp.get("error"))

    launched = [e["data"] for e in events(redis, sharded) if (e.get("data") or {}).get("processes") == 2]
    assert launched and launched[0]["sharding"] == "fsdp"
    shares = [e["data"] for e in events(redis, sharded) if "parameters_held" in (e.get("data") or {})]
    assert shares, "no FSDP share event"
    print("rank 0 holds", shares[0])
    assert 0.3 < shares[0]["share"] < 0.7  # two shards of every unit: about half each (odd sizes round up)

    # The preflight held each rank to its shard: half the weights, gradients and optimizer state of a DDP rank.
    split, whole = fsdp["resolved"]["memory_estimate"], ddp["resolved"]["memory_estimate"]
    assert split["sharded"] and split["processes"] == whole["processes"] == 2 and not whole["sharded"]
    assert split["parts"]["optimizer"] == -(-whole["parts"]["optimizer"] // 2), (split, whole)  # CPU: weights whole

    a, b = train_losses(redis, sharded), train_losses(redis, replicated)
    assert [s for s, _ in a] == [s for s, _ in b] and len(a) >= 4
    differences = [abs(x - y) for (_, x), (_, y) in zip(a, b, strict=True)]
    print("FSDP - DDP loss per step:", [f"{d:.2e}" for d in differences])
    assert max(differences) <= TOLERANCE, (a, b)
    assert a[-1][1] < a[0][1]  # it trained
    for phase in ("baseline", "final"):  # the evaluations gather every rank's rows alike
        assert fsdp["results"][phase]["eval_loss"] == pytest.approx(ddp["results"][phase]["eval_loss"], rel=1e-4)
    assert fsdp["results"]["final"]["eval_loss"] < fsdp["results"]["baseline"]["eval_loss"]

    # model/ is an ordinary folder: the gathered full weights, equal to what DDP trained.
    names = {x["name"] for x in fsdp["artifacts"]}
    assert "model/config.json" in names and any(n.startswith("model/model") for n in names), names
    mine, theirs = weights(env, sharded), weights(env, replicated)
    assert mine.keys() == theirs.keys()
    drift = max(float((mine[k] - theirs[k]).abs().max()) for k in mine)
    print("largest weight difference FSDP vs DDP:", drift)
    base = weights_of_folder(tiny_causal_lm)
    moved = max(float((mine[k] - base[k]).abs().max()) for k in mine)
    assert drift < moved / 20, (drift, moved)  # the same training, not the untouched base


def weights_of_folder(folder: Path) -> dict[str, torch.Tensor]:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder).state_dict()


def test_a_checkpoint_saved_under_fsdp_resumes_every_rank(redis, env, tiny_causal_lm: Path, tmp_path: Path) -> None:
    worker = WorkerProcess({**env, "FTJOBS_CHECKPOINT_STEPS": "2"}, tmp_path / "worker-ckpt.log")
    try:
        job_id = submit(redis, env, request(tiny_causal_lm, env, "fsdp", max_steps=5000))
        pointer = store_root(env) / checkpoint_pointer_path("default", job_id)
        saved = lambda r: r["status"] != "running" or pointer.exists() and r["progress"].get("step", 0) >= 3  # noqa: E731
        record = wait_for(redis, job_id, ["running", *ENDED], timeout=400, worker=worker, until=saved)
        assert record["status"] == "running", record.get("error")
        step = json.loads(pointer.read_text())["step"]
        assert step >= 2

        os.kill(rank_process(job_id, 1), signal.SIGKILL)  # the group ends; the job goes back to its queue
        resumed = lambda r: r["status"] != "running" or r["attempt"] == 2 and r["progress"].get("step", 0) >= step + 2  # noqa: E731
        record = wait_for(redis, job_id, ["running", *ENDED], timeout=400, worker=worker, until=resumed)
        assert record["status"] == "running" and record["attempt"] == 2, (record.get("error"), worker.output()[-6000:])
        assert record["resolved"]["resumed_from_step"] >= step, record["resolved"]
        resumed_at = record["resolved"]["resumed_from_step"]
        deadline = time.monotonic() + 300  # the loss is logged at checkpoint steps: wait for one past the resume
        while not any(at > resumed_at for at, _ in train_losses(redis, job_id)) and time.monotonic() < deadline:
            time.sleep(0.2)
        losses = dict(train_losses(redis, job_id))
        before, after = (
            [v for s, v in losses.items() if s <= resumed_at],
            [v for s, v in losses.items() if s > resumed_at],
        )
        assert before and after, losses
        assert after[0] < before[0], losses  # the weights came back: not a fresh start from the base

        assert guarded_write(redis, job_id, {"cancel_requested": True}, statuses=["running"])
        assert wait_for(redis, job_id, timeout=120, worker=worker)["status"] == "cancelled"
        deadline = time.monotonic() + 30
        while processes_of(job_id) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert processes_of(job_id) == []  # no rank of either attempt is left
    finally:
        worker.stop()
