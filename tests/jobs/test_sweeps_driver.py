"""The sweep driver's passes on a real Redis, with the trials' jobs ended as a worker ends them (their status and
results written into the job hash): sampling, parallelism, settling, pruning, cancel, orphans and the lock."""

from __future__ import annotations

import json
from typing import Any

from ftjobs.client.models.sweeps import SweepCreate
from ftjobs.core import keys
from ftjobs.core import sweeps as layout
from ftjobs.core.records import new_id
from ftjobs.jobs.sweep_driver import SweepDriver, open_study, storage_for
from tests.jobs.helpers import TENANT

RATES = [1e-5, 3e-2, 3e-5, 1e-2, 1e-4, 3e-3]


def new_sweep(redis, **options: Any) -> str:  # type: ignore[no-untyped-def]
    body = {
        "job": {"model": "/models/tiny", "training_file": "file-" + "0" * 20},
        "search_space": {"hyperparameters.learning_rate": {"type": "categorical", "values": RATES}},
        "sampler": "grid",
        "n_trials": 6,
        "parallelism": 2,
        **options,
    }
    sweep_id = new_id("sweep-")
    layout.create_sweep(redis, layout.new_sweep_record(TENANT, sweep_id, SweepCreate.model_validate(body)))
    return sweep_id


def end_job(redis, job_id: str, status: str, **fields: Any) -> None:  # type: ignore[no-untyped-def]
    values = {"status": status, **fields}
    redis.hset(keys.job_key(TENANT, job_id), mapping={k: json.dumps(v) for k, v in values.items()})


def sweep(redis, sweep_id: str) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    record = layout.read_sweep(redis, TENANT, sweep_id)
    assert record is not None
    return record


def in_flight(record: dict[str, Any]) -> list[dict[str, Any]]:
    return [t for t in record["trials"] if t["state"] == "queued"]


def test_a_grid_sweep_runs_every_point_once_at_most_two_at_a_time(redis, settings) -> None:  # type: ignore[no-untyped-def]
    sweep_id = new_sweep(redis)
    driver = SweepDriver(redis, settings)
    for _ in range(10):
        driver.pass_once()
        record = sweep(redis, sweep_id)
        assert len(in_flight(record)) <= 2
        for t in in_flight(record):  # the trial's job: created by the driver, validated and queued as any job
            job = json.loads(redis.hget(keys.job_key(TENANT, t["job_id"]), "request"))
            lr = t["params"]["hyperparameters.learning_rate"]
            assert job["hyperparameters"]["learning_rate"] == lr and job["metadata"]["sweep_id"] == sweep_id
            end_job(redis, t["job_id"], "succeeded", results={"final": {"eval_loss": 1 + lr * 10}, "steps": 8})
    assert record["status"] == "succeeded", record
    assert sorted(t["params"]["hyperparameters.learning_rate"] for t in record["trials"]) == sorted(RATES)
    assert record["best"]["params"] == {"hyperparameters.learning_rate": 1e-5} and record["best"]["value"] == 1.0001
    assert not redis.sismember(layout.ACTIVE_SWEEPS_KEY, layout.active_member(TENANT, sweep_id))
    study = open_study(storage_for(settings.redis_url, TENANT, sweep_id), sweep_id, SweepCreate(**record["request"]), 0)
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 6 and study.best_value == 1.0001


def test_pruned_failed_and_cancelled_trials_then_a_cancel(redis, settings) -> None:  # type: ignore[no-untyped-def]
    sweep_id = new_sweep(redis, sampler="tpe", n_trials=5)
    driver = SweepDriver(redis, settings)
    driver.pass_once()
    first, second = in_flight(sweep(redis, sweep_id))
    req = SweepCreate(**sweep(redis, sweep_id)["request"])
    study = open_study(storage_for(settings.redis_url, TENANT, sweep_id), sweep_id, req, 0)
    trial = study.trials[first["optuna_number"]]
    study._storage.set_trial_user_attr(trial._trial_id, "pruned_at_step", 4)  # as jobs/sweep_pruning.py does
    study._storage.set_trial_user_attr(trial._trial_id, "pruned_value", 2.5)
    end_job(redis, first["job_id"], "succeeded", results={"final": {"eval_loss": 2.5}, "steps": 4})
    end_job(redis, second["job_id"], "failed", error={"code": "out_of_memory", "message": "try a smaller batch"})
    driver.pass_once()
    record = sweep(redis, sweep_id)
    states = {t["number"]: (t["state"], t.get("message")) for t in record["trials"]}
    assert states[0] == ("pruned", None) and record["trials"][0]["pruned_at_step"] == 4
    assert states[1] == ("failed", "try a smaller batch") and len(in_flight(record)) == 2
    third = in_flight(record)[0]
    end_job(redis, third["job_id"], "cancelled")  # a trial cancelled by hand: the sweep goes on
    driver.pass_once()
    record = sweep(redis, sweep_id)
    assert record["trials"][2]["state"] == "cancelled" and len(record["trials"]) == 5 and record["status"] == "running"

    assert layout.request_cancel(redis, TENANT, sweep_id)  # as POST /v1/sweeps/{id}/cancel (it cancels the jobs)
    for t in in_flight(record):
        end_job(redis, t["job_id"], "cancelled")
    driver.pass_once()
    record = sweep(redis, sweep_id)
    assert record["status"] == "cancelled" and len(record["trials"]) == 5
    assert [t["state"] for t in record["trials"]] == ["pruned", "failed", "cancelled", "cancelled", "cancelled"]
    assert not redis.sismember(layout.ACTIVE_SWEEPS_KEY, layout.active_member(TENANT, sweep_id))


def test_orphans_are_failed_and_a_held_lock_is_respected(redis, settings) -> None:  # type: ignore[no-untyped-def]
    sweep_id = new_sweep(redis, sampler="random")
    req = SweepCreate(**sweep(redis, sweep_id)["request"])
    study = open_study(storage_for(settings.redis_url, TENANT, sweep_id), sweep_id, req, 0)
    study.ask()  # a driver that died between asking optuna and creating the job
    token = layout.acquire_lock(redis, TENANT, sweep_id, 30)
    driver = SweepDriver(redis, settings)
    assert token and driver.pass_once() == 0 and sweep(redis, sweep_id)["trials"] == []  # another worker has it
    layout.release_lock(redis, TENANT, sweep_id, token)
    assert driver.pass_once() == 1
    assert study.trials[0].state.name == "FAIL" and len(sweep(redis, sweep_id)["trials"]) == 2


def test_trials_count_against_the_tenants_active_jobs(redis, settings, tmp_path) -> None:  # type: ignore[no-untyped-def]
    tenants = tmp_path / "tenants.toml"
    tenants.write_text(f"[tenants.{TENANT}]\nmax_active_jobs = 1\n")
    sweep_id = new_sweep(redis, sampler="random", n_trials=3)
    driver = SweepDriver(redis, settings.model_copy(update={"tenants_file": tenants}))
    for _ in range(3):
        driver.pass_once()
    record = sweep(redis, sweep_id)
    assert len(record["trials"]) == 1 and "max_active_jobs" in record["message"]
    req = SweepCreate(**record["request"])
    study = open_study(storage_for(settings.redis_url, TENANT, sweep_id), sweep_id, req, 0)
    assert len(study.trials) == 1  # no point asked of optuna while the sweep waits
    redis.zrem(keys.status_index_key(TENANT, "validating_files"), record["trials"][0]["job_id"])  # it ended
    end_job(redis, record["trials"][0]["job_id"], "succeeded", results={"final": {"eval_loss": 1.0}})
    driver.pass_once()
    record = sweep(redis, sweep_id)
    assert len(record["trials"]) == 2 and record["trials"][0]["state"] == "complete", record
