"""Task dpo end to end: preference pairs, TRL's DPOTrainer on a real worker, the metrics before and after.

The synthetic preference set: the prompt names a few words, the chosen answer repeats them, the rejected answer is
other random words of the same count. A random tiny Llama prefers neither at first (reward_accuracy near chance);
a few dozen DPO steps teach it to prefer the copy.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any

import pytest

from ftjobs.client.models import Hyperparameters, JobCreate, Task
from tests.conftest import WorkerProcess
from tests.jobs.helpers import events, metric_points, submit, upload_rows, wait_for
from tests.jobs.test_safeguards import COLOURS, qa

# A loaded machine (a shared CI runner) may take minutes per job: wait generously, and evaluate every 12 steps
# (3 times a run) rather than the automatic ~12 times: the before/after metrics come from the preference scorer.
JOB_TIMEOUT_S = 900
EVAL_STEPS = 12
WORDS = "red green blue cat dog sun moon tree fish bird one two three four five six seven eight nine ten".split()


def preference_rows(n: int, seed: int, shape: str = "plain") -> list[dict[str, Any]]:
    """chosen = the prompt's words repeated, rejected = as many other random words; `shape`: plain or openai."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        said = rng.sample(WORDS, 3)
        other = rng.sample([w for w in WORDS if w not in said], 3)
        prompt, chosen, rejected = f"say {' '.join(said)} :", " " + " ".join(said), " " + " ".join(other)
        if shape == "openai":
            rows.append(
                {
                    "input": {"messages": [{"role": "user", "content": prompt}]},
                    "preferred_output": [{"role": "assistant", "content": chosen}],
                    "non_preferred_output": [{"role": "assistant", "content": rejected}],
                }
            )
        else:
            rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
    return rows


def dpo_request(
    model: Path, env: dict[str, str], method: dict, lr: float, shape: str = "plain", **kw: Any
) -> JobCreate:
    return JobCreate(
        model=str(model),
        task=Task.dpo,
        training_file=upload_rows(env, preference_rows(96, 1, shape)),
        validation_file=upload_rows(env, preference_rows(48, 2, shape)),
        method=method,
        eval_generation_limit=0,
        eval_samples=0,
        hyperparameters=Hyperparameters(
            n_epochs=3, batch_size=8, learning_rate=lr, beta=0.1, seed=0, eval_steps=EVAL_STEPS
        ),
        **kw,
    )


def check_learned(job: dict[str, Any]) -> tuple[dict[str, float], dict[str, float]]:
    """The job's preference metrics improved; returns (before, after)."""
    before, after = job["results"]["baseline"], job["results"]["final"]
    print(
        f"reward_accuracy {before['reward_accuracy']:.3f} -> {after['reward_accuracy']:.3f}, "
        f"reward_margin {before['reward_margin']:.4f} -> {after['reward_margin']:.4f}, "
        f"rewards/accuracies {before['rewards/accuracies']:.3f} -> {after['rewards/accuracies']:.3f}, "
        f"eval_loss {before['eval_loss']:.4f} -> {after['eval_loss']:.4f}"
    )
    assert before["eval_loss"] == pytest.approx(math.log(2), abs=1e-4)  # the model is its own reference at first
    assert before["rewards/margins"] == pytest.approx(0.0, abs=1e-4)
    assert after["reward_accuracy"] > before["reward_accuracy"]
    assert after["reward_accuracy"] > 0.5
    assert after["reward_margin"] > before["reward_margin"]
    assert after["rewards/accuracies"] > 0.5 and after["rewards/margins"] > 0
    assert after["rewards/chosen"] > after["rewards/rejected"]
    assert after["eval_loss"] < before["eval_loss"]
    # reward_margin after = the reference's + the implicit margin (dpo.py's definitions)
    assert after["reward_margin"] == pytest.approx(before["reward_margin"] + after["rewards/margins"], abs=1e-3)
    return before, after


def test_dpo_lora_learns_the_preferences(redis, env, tmp_path: Path, tiny_causal_lm: Path) -> None:  # type: ignore[no-untyped-def]
    worker = WorkerProcess({**env, "FTJOBS_CHECKPOINT_STEPS": "12"}, tmp_path / "worker.log")  # checkpoints on the way
    try:
        job_id = submit(redis, env, dpo_request(tiny_causal_lm, env, {"type": "lora", "r": 8}, 5e-3), validate=True)
        job = wait_for(redis, job_id, worker=worker, timeout=JOB_TIMEOUT_S)
    finally:
        worker.stop()
    assert job["status"] == "succeeded", (job.get("error"), worker.output()[-3000:])
    saved = [e for e in events(redis, job_id) if e["type"] == "checkpoint"]
    assert saved, [e["message"] for e in events(redis, job_id)]
    check_learned(job)
    assert job["resolved"]["beta"] == 0.1
    points = metric_points(redis, job_id)
    train = [p for p in points if p["split"] == "train" and "rewards/margins" in p["values"]]
    assert train and all(p["step"] >= 1 for p in train)  # the train stream carries DPO's rewards with steps
    evals = [p for p in points if p["split"] == "eval" and "reward_accuracy" in p["values"]]
    assert [p["step"] for p in evals] == [0, job["results"]["steps"]]
    names = {a["name"] for a in job["artifacts"]}
    assert "adapter/adapter_model.safetensors" in names
    assert not any(n.startswith("adapter/ref/") for n in names)  # the reference is the base: nothing of it saved


def test_dpo_full_learns_the_preferences(redis, env, worker, tiny_causal_lm: Path) -> None:  # type: ignore[no-untyped-def]
    request = dpo_request(tiny_causal_lm, env, {"type": "full"}, 3e-4)  # a frozen copy of the model is the reference
    job = wait_for(redis, submit(redis, env, request, validate=True), worker=worker, timeout=JOB_TIMEOUT_S)
    assert job["status"] == "succeeded", (job.get("error"), worker.output()[-3000:])
    check_learned(job)
    assert "model/model.safetensors" in {a["name"] for a in job["artifacts"]}


def test_dpo_trains_openai_preference_rows(redis, env, worker, tiny_causal_lm: Path) -> None:  # type: ignore[no-untyped-def]
    """OpenAI's shape (input.messages, preferred_output, non_preferred_output) trains through the chat template."""
    request = dpo_request(tiny_causal_lm, env, {"type": "lora", "r": 8}, 5e-3, shape="openai")
    job = wait_for(redis, submit(redis, env, request, validate=True), worker=worker, timeout=JOB_TIMEOUT_S)
    assert job["status"] == "succeeded", (job.get("error"), worker.output()[-3000:])
    before, after = job["results"]["baseline"], job["results"]["final"]
    print(f"openai shape: reward_margin {before['reward_margin']:.4f} -> {after['reward_margin']:.4f}")
    assert before["eval_loss"] == pytest.approx(math.log(2), abs=1e-4)
    assert after["rewards/margins"] > 0 and after["reward_margin"] > before["reward_margin"]


def test_sft_then_dpo_continues_the_parent(redis, env, worker, tiny_causal_lm: Path) -> None:  # type: ignore[no-untyped-def]
    sft = JobCreate(
        model=str(tiny_causal_lm),
        training_file=upload_rows(env, qa(32, COLOURS)),
        validation_file=upload_rows(env, qa(12, COLOURS, offset=1)),
        method={"type": "lora", "r": 8},
        eval_generation_limit=0,
        eval_samples=0,
        hyperparameters=Hyperparameters(n_epochs=2, batch_size=8, learning_rate=5e-3),
    )
    parent = wait_for(redis, submit(redis, env, sft), worker=worker, timeout=JOB_TIMEOUT_S)
    assert parent["status"] == "succeeded", (parent.get("error"), worker.output()[-3000:])
    request = dpo_request(tiny_causal_lm, env, {"type": "lora", "r": 8}, 5e-3, parent_job_id=parent["id"])
    child = wait_for(redis, submit(redis, env, request, validate=True), worker=worker, timeout=JOB_TIMEOUT_S)
    assert child["status"] == "succeeded", (child.get("error"), worker.output()[-3000:])
    check_learned(child)  # the parent's weights are the reference: the child starts at loss ln 2 from them
    names = {a["name"] for a in child["artifacts"]}
    assert "adapter/adapter_model.safetensors" in names
    assert not any(n.startswith("adapter/ref/") for n in names)  # the parent's frozen copy is not saved
    forgetting = child["results"]["forgetting"]  # measured on the parent's SFT data, as for other continued jobs
    print(f"forgetting: {json.dumps(forgetting)}")
    assert forgetting["reference_loss_before"] == pytest.approx(parent["results"]["final"]["eval_loss"], rel=0.5)
    assert child["resolved"]["parent_job_id"] == parent["id"]
