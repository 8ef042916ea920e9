"""Sweeps end to end: the API creates a sweep, two real worker processes run its trials (ordinary jobs) and their
sweep driver samples with optuna and prunes bad trials early (median pruning); a cancel stops every trial."""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import WorkerProcess
from tests.jobs.test_train import qa_rows
from tests.service.conftest import jsonl, upload

TERMINAL = ("succeeded", "failed", "cancelled")
# Learning rates from far too small to large: the small ones hardly move the tiny model's loss.
RATES = [1e-5, 3e-2, 3e-5, 1e-2, 1e-4, 3e-3, 3e-4, 1e-3]


@pytest.fixture
def workers(env: dict[str, str], tmp_path: Path) -> Iterator[list[WorkerProcess]]:
    """Two worker processes: parallelism 2 runs two trials at once (each worker also runs the sweep driver)."""
    started = [WorkerProcess(env, tmp_path / f"worker{i}.log") for i in range(2)]
    yield started
    for w in started:
        w.stop()


def base_job(http: httpx.Client, model: Path, **hyperparameters: Any) -> dict[str, Any]:
    train = upload(http, jsonl(qa_rows(16))).json()["id"]
    valid = upload(http, jsonl(qa_rows(10)), filename="valid.jsonl").json()["id"]
    return {
        "model": str(model),
        "training_file": train,
        "validation_file": valid,
        "method": {"type": "lora", "r": 4, "alpha": 8, "dropout": 0.0},
        "hyperparameters": {"n_epochs": 2, "batch_size": 4, "max_seq_length": 32, "eval_steps": 2, **hyperparameters},
        "eval_generation_limit": 0,
        "eval_samples": 0,
    }


def wait_sweep(http: httpx.Client, sweep_id: str, workers: list[WorkerProcess], timeout: float = 900) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        sweep = http.get(f"/v1/sweeps/{sweep_id}").json()
        if sweep["status"] != "running":
            return dict(sweep)
        logs = "\n".join(w.output()[-3000:] for w in workers)
        assert time.monotonic() < deadline, (sweep, logs)
        assert all(w.proc.poll() is None for w in workers), logs
        time.sleep(1)


def eval_steps(http: httpx.Client, job_id: str) -> list[int]:
    points = http.get(f"/v1/jobs/{job_id}/metrics", params={"limit": 1000}).json()["data"]
    return [p["step"] for p in points if p["split"] == "eval" and p["step"] > 0]


def test_sweep_prunes_bad_trials_and_finds_a_good_one(http, workers, tiny_causal_lm) -> None:  # type: ignore[no-untyped-def]
    body = {
        "job": base_job(http, tiny_causal_lm),
        "search_space": {"hyperparameters.learning_rate": {"type": "categorical", "values": RATES}},
        "sampler": "grid",
        "n_trials": 8,
        "parallelism": 2,
        "metric": "eval_loss",
        "pruner": {"type": "median", "n_startup_trials": 2},
    }
    started = time.monotonic()
    created = http.post("/v1/sweeps", json=body)
    assert created.status_code == 201, created.text
    sweep = wait_sweep(http, created.json()["id"], workers)
    seconds = time.monotonic() - started
    assert sweep["status"] == "succeeded", sweep
    trials = sweep["trials"]
    assert len(trials) == 8 and sorted(t["params"]["hyperparameters.learning_rate"] for t in trials) == sorted(RATES)

    # Every trial is an ordinary job of the tenant, tagged with its sweep.
    for trial in trials:
        job = http.get(f"/v1/jobs/{trial['job_id']}").json()
        assert job["metadata"]["sweep_id"] == sweep["id"] and job["metadata"]["sweep_trial"] == str(trial["number"])
        assert job["hyperparameters"]["learning_rate"] == trial["params"]["hyperparameters.learning_rate"]
        assert job["status"] == "succeeded", job  # a pruned trial stopped early but kept what it trained

    # Pruned trials stopped early: fewer steps, fewer evaluations in their metric streams.
    pruned = [t for t in trials if t["state"] == "pruned"]
    complete = [t for t in trials if t["state"] == "complete"]
    assert pruned and complete and len(pruned) + len(complete) == 8, trials
    full = max(len(eval_steps(http, t["job_id"])) for t in complete)
    for t in pruned:
        assert t["steps"] < t["total_steps"] and t["pruned_at_step"] == t["steps"], t
        assert len(eval_steps(http, t["job_id"])) < full, t
        events = http.get(f"/v1/jobs/{t['job_id']}/events", params={"limit": 1000}).json()["data"]
        assert any(e["message"].startswith("pruned by sweep") for e in events), events
        pruned_result = http.get(f"/v1/jobs/{t['job_id']}").json()["results"]["pruned"]  # the job says so itself
        assert pruned_result == {"sweep_id": sweep["id"], "metric": "eval_loss", "value": t["value"],
                                 "at_step": t["pruned_at_step"]}  # fmt: skip
    for t in complete:
        assert "pruned" not in http.get(f"/v1/jobs/{t['job_id']}").json()["results"], t

    # The best trial beats the median trial, and its artifacts are listed.
    values = [t["value"] for t in trials if t["value"] is not None]
    best = sweep["best"]
    assert best["value"] == min(t["value"] for t in complete) and best["value"] < statistics.median(values)
    assert {"adapter/adapter_model.safetensors", "metrics.json"} <= {a["name"] for a in best["artifacts"]}
    print(f"\nsweep of 8 trials in {seconds:.0f} s; best lr {best['params']}, eval_loss {best['value']:.3f} vs median "
          f"{statistics.median(values):.3f}")  # fmt: skip
    for t in trials:
        lr = t["params"]["hyperparameters.learning_rate"]
        job = http.get(f"/v1/jobs/{t['job_id']}").json()
        timeline = f"queued {job['started_at'] - job['created_at']} s, ran {job['finished_at'] - job['started_at']} s"
        print(f"  trial {t['number']}  lr {lr:<8g} {t['state']:<9} steps {t['steps']}/{t['total_steps']}  "
              f"eval_loss {t['value']:.3f}  ({timeline})")  # fmt: skip


def test_cancelling_a_sweep_cancels_its_trials(http, workers, tiny_causal_lm) -> None:  # type: ignore[no-untyped-def]
    body = {
        "job": base_job(http, tiny_causal_lm, n_epochs=50),  # trials that would run for minutes
        "search_space": {"method.r": {"type": "int", "low": 2, "high": 8}},
        "n_trials": 6,
        "parallelism": 2,
    }
    sweep_id = http.post("/v1/sweeps", json=body).json()["id"]
    deadline = time.monotonic() + 300
    while True:  # two trials started, one of them training
        sweep = http.get(f"/v1/sweeps/{sweep_id}").json()
        if len(sweep["trials"]) == 2 and any(t["job_status"] == "running" for t in sweep["trials"]):
            break
        assert time.monotonic() < deadline, (sweep, workers[0].output()[-3000:])
        time.sleep(0.5)
    cancelled = http.post(f"/v1/sweeps/{sweep_id}/cancel").json()
    assert cancelled["status"] == "cancelled", cancelled
    deadline = time.monotonic() + 120
    while True:
        jobs = [http.get(f"/v1/jobs/{t['job_id']}").json() for t in sweep["trials"]]
        sweep = http.get(f"/v1/sweeps/{sweep_id}").json()
        if all(j["status"] in TERMINAL for j in jobs) and all(t["state"] == "cancelled" for t in sweep["trials"]):
            break
        assert time.monotonic() < deadline, (jobs, sweep)
        time.sleep(0.5)
    assert {j["status"] for j in jobs} == {"cancelled"} and len(sweep["trials"]) == 2, sweep
    time.sleep(3)  # a few driver passes: no trial starts after the cancel
    assert len(http.get(f"/v1/sweeps/{sweep_id}").json()["trials"]) == 2


def test_a_sweep_survives_a_killed_worker(http, env, tmp_path, tiny_causal_lm) -> None:  # type: ignore[no-untyped-def]
    fast = {**env, "FTJOBS_STALE_AFTER_S": "5"}  # the reconciler retries the killed worker's trial within seconds
    first = WorkerProcess(fast, tmp_path / "first.log")
    body = {
        "job": base_job(http, tiny_causal_lm),
        "search_space": {"hyperparameters.learning_rate": {"type": "categorical", "values": [1e-3, 1e-2, 3e-2]}},
        "sampler": "grid",
        "n_trials": 3,
        "parallelism": 1,
        "pruner": {"type": "none"},
    }
    sweep_id = http.post("/v1/sweeps", json=body).json()["id"]
    deadline = time.monotonic() + 300
    while True:  # the first trial trains on the only worker, which its sweep driver also runs in
        trials = http.get(f"/v1/sweeps/{sweep_id}").json()["trials"]
        if trials and http.get(f"/v1/jobs/{trials[0]['job_id']}").json()["progress"]["step"] > 0:
            break
        assert time.monotonic() < deadline, (trials, first.output()[-3000:])
        time.sleep(0.2)
    first.proc.kill()  # SIGKILL: no clean-up of any kind (its horse dies with it)
    first.stop()
    second = WorkerProcess(fast, tmp_path / "second.log")
    try:
        sweep = wait_sweep(http, sweep_id, [second])
    finally:
        second.stop()
    assert sweep["status"] == "succeeded" and len(sweep["trials"]) == 3, sweep
    assert [t["state"] for t in sweep["trials"]] == ["complete"] * 3, sweep
    retried = http.get(f"/v1/jobs/{sweep['trials'][0]['job_id']}").json()
    assert retried["status"] == "succeeded" and retried["attempt"] == 2, retried
