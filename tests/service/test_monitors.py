"""Monitors: a schedule (RQ's scheduler in a real worker) evaluates a finished job on the newest upload of a shifted
dataset, finds the drop, raises `monitor.degraded` (event and webhook) and starts a retraining job that improves the
metric on the new data; and the API's checks, run-now, history and the client and CLI."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from ftjobs.client.models import JobCreate, LoraMethod, Task
from ftjobs.core import keys, monitors
from tests.jobs.helpers import create_job, eventually, wait_for
from tests.service.conftest import ROWS, assert_error, jsonl, upload
from tests.service.test_limits import A, assert_429, tenants_toml
from tests.service.test_webhooks import ALLOW, FAST, Dispatcher, receiver, settings  # noqa: F401 - fixtures

WORDS = ("bake", "kick")
LORA = {"type": "lora", "r": 8, "target_modules": ["query", "value"]}


def rows(labels: tuple[str, ...], n: int, offset: int = 0) -> list[dict[str, Any]]:
    """Rows whose first word names the label: `labels[i]` for WORDS[i] (a shift: the same words, other labels)."""
    return [
        {"text": f"{w} thing {i + offset}", "label": lab}
        for i in range(n)
        for w, lab in zip(WORDS, labels, strict=True)
    ]


@pytest.fixture
def dispatcher(env: dict[str, str], tmp_path: Path) -> Iterator[Dispatcher]:
    """A real webhook dispatcher process (launch/webhooks.py), for the receiver on loopback."""
    started = Dispatcher({**env, **FAST, **ALLOW}, tmp_path / "dispatcher.log")
    yield started
    started.stop()


def once_in(seconds: float) -> str:
    """A cron expression (croniter's sixth field: seconds) that names one moment, `seconds` from now."""
    at = datetime.now() + timedelta(seconds=seconds)
    return f"{at.minute} {at.hour} {at.day} {at.month} * {at.second}"


def test_a_schedule_finds_the_drop_raises_the_event_and_the_retraining_improves_on_the_new_data(  # type: ignore[no-untyped-def]
    http, redis, env, worker, receiver, dispatcher, minilm: Path  # noqa: F811 - fixtures
) -> None:  # fmt: skip
    hook = http.post("/v1/webhooks", json={"url": receiver.url(), "event_types": ["monitor.degraded"]})
    assert hook.status_code == 201, hook.text
    before, shifted = ("spam", "ham"), ("ham", "spam")  # the same words, the labels swapped
    train = upload(http, jsonl(rows(before, 12))).json()["id"]
    valid = upload(http, jsonl(rows(before, 4, offset=100))).json()["id"]
    created = http.post("/v1/jobs", json={
        "model": str(minilm), "task": "classification", "training_file": train, "validation_file": valid,
        "method": LORA, "hyperparameters": {"n_epochs": 3, "batch_size": 8, "learning_rate": 5e-3},
    })  # fmt: skip
    assert created.status_code == 201, created.text
    job = wait_for(redis, created.json()["id"], timeout=300)
    assert job["status"] == "succeeded", job
    reference = job["results"]["final"]["f1"]
    assert reference > 0.9, job["results"]  # it learnt its data: the drop below is the shift's
    new_file = upload(http, jsonl(rows(shifted, 16, offset=200)), filename="traffic.jsonl").json()["id"]

    monitor = http.post("/v1/monitors", json={
        "job_id": job["id"], "dataset": "traffic.jsonl", "schedule": once_in(8), "threshold": 0.2, "retrain": True,
        "retrain_hyperparameters": {"n_epochs": 5, "batch_size": 8, "learning_rate": 1e-2, "validation_split": 0.25},
    })  # fmt: skip
    assert monitor.status_code == 201, monitor.text
    mon = monitor.json()
    assert mon["metric"] == "f1" and mon["reference"] == reference and mon["higher_is_better"] is True

    def runs() -> list[dict[str, Any]]:
        return list(http.get(f"/v1/monitors/{mon['id']}/runs").json()["data"])

    assert eventually(lambda: len(runs()) == 1, timeout=120), "RQ's scheduler never started the run"
    assert eventually(lambda: runs()[0]["status"] != "evaluating", timeout=300), runs()
    run = runs()[0]
    print(f"monitor run: {run}")
    assert run["trigger"] == "schedule" and run["file_id"] == new_file
    assert run["status"] == "degraded" and run["drop"] > 0.2 and run["value"] < reference
    wait_for(redis, run["evaluation_job_id"], timeout=120)  # the run is concluded just before its job finishes
    evaluation = http.get(f"/v1/jobs/{run['evaluation_job_id']}").json()
    assert evaluation["evaluate_only"] is True and evaluation["status"] == "succeeded"
    assert evaluation["results"]["final"]["f1"] == run["value"]
    events = http.get(f"/v1/jobs/{evaluation['id']}/events").json()["data"]
    assert any(e["level"] == "warning" and "degraded" in e["message"] for e in events), events

    assert eventually(lambda: bool(receiver.at("/hook")), timeout=60), "no monitor.degraded webhook"
    event = receiver.at("/hook")[0].json()
    assert event["type"] == "monitor.degraded" and event["data"]["id"] == run["id"]
    assert event["data"]["retrain_job_id"] == run["retrain_job_id"] and event["data"]["job_id"] == job["id"]

    retrained = wait_for(redis, run["retrain_job_id"], timeout=300)
    assert retrained["status"] == "succeeded", retrained
    assert retrained["request"]["parent_job_id"] == job["id"]
    assert retrained["request"]["training_file"] == new_file
    results = retrained["results"]
    print(f"retraining on the new data: f1 {results['baseline']['f1']:.3f} -> {results['final']['f1']:.3f}; "
          f"forgetting {results.get('forgetting')}")  # fmt: skip
    assert results["final"]["f1"] > results["baseline"]["f1"] + 0.2  # the new data's held-out rows
    assert "forgetting" in results  # measured on the watched job's training data, as for any continued job
    listed = http.get("/v1/monitors").json()["data"]
    assert listed[0]["id"] == mon["id"] and listed[0]["last_run"]["id"] == run["id"]
    assert http.delete(f"/v1/monitors/{mon['id']}").json()["deleted"] is True


@pytest.fixture
def watched(http, redis, model_root: Path) -> str:  # type: ignore[no-untyped-def]
    """A succeeded classification job (as its worker leaves it), with f1 in its final results."""
    file_id = upload(http, jsonl(ROWS["text_label"] * 4)).json()["id"]
    request = JobCreate(model=str(model_root / "tiny-bert"), task=Task.classification, training_file=file_id,
                        method=LoraMethod(r=4))  # fmt: skip
    return create_job(redis, request, status="succeeded", results={"final": {"f1": 0.9, "eval_loss": 0.3}})


def test_monitors_are_checked_run_on_demand_and_listed(http, redis, client, watched: str, capsys) -> None:  # type: ignore[no-untyped-def]
    body = {"job_id": watched, "dataset": "new.jsonl", "schedule": "0 3 * * *"}
    request = JobCreate.model_validate(json.loads(redis.hget(keys.job_key("default", watched), "request")))
    running = create_job(redis, request, status="running")

    def create(**changes: Any) -> Any:
        return http.post("/v1/monitors", json={**body, **changes})

    assert_error(create(job_id=running), 409, "parent_job_not_succeeded", "job_id")
    assert_error(create(job_id="ftjob-" + "0" * 20), 404, "job_not_found", "job_id")
    assert_error(create(schedule="every hour"), 422, "validation_error", "schedule")
    assert_error(create(metric="bleu"), 422, "validation_error", "metric")
    assert_error(create(threshold=-1), 422, "validation_error", "threshold")
    assert_error(http.get("/v1/monitors/mon-" + "0" * 20), 404, "monitor_not_found")

    mon = create(metric="eval_loss", retrain=True).json()
    assert mon["higher_is_better"] is False and mon["reference"] == 0.3 and mon["next_run_at"] > 0
    scheduled = redis.zrange(f"rq:scheduled:{'ftjobs-validate'}", 0, -1)  # RQ's ScheduledJobRegistry
    assert [s.decode() for s in scheduled] == [f"monitor-{mon['id']}-{int(mon['next_run_at'])}"]

    no_file = http.post(f"/v1/monitors/{mon['id']}/run")
    assert no_file.status_code == 201 and no_file.json()["status"] == "failed", no_file.text
    new = upload(http, jsonl(ROWS["text_label"] * 3), filename="new.jsonl").json()["id"]
    started = client.monitors.run(mon["id"])  # the client, like the API: an evaluation job on the newest file
    assert started.status == "evaluating" and started.file_id == new and started.trigger == "manual"
    evaluation = http.get(f"/v1/jobs/{started.evaluation_job_id}").json()
    assert evaluation["evaluate_only"] is True and evaluation["parent_job_id"] == watched
    assert evaluation["validation_file"] == new and evaluation["status"] == "validating_files"
    assert evaluation["metadata"] == {"monitor_id": mon["id"], "monitor_run": started.id}
    assert [r.id for r in client.monitors.runs(mon["id"]).data] == [started.id, no_file.json()["id"]]

    from ftjobs.client.cli import main

    assert main(["monitors", "runs", mon["id"]], client=client) == 0
    assert started.id in capsys.readouterr().out
    assert client.monitors.delete(mon["id"]).deleted is True
    assert redis.zcard("rq:scheduled:ftjobs-validate") == 0  # its scheduled run went with it
    assert_error(http.post(f"/v1/monitors/{mon['id']}/run"), 404, "monitor_not_found")


def test_a_monitor_at_the_tenants_max_active_jobs_starts_no_job(  # type: ignore[no-untyped-def]
    redis, env, make_client, tmp_path: Path, model_root: Path, monkeypatch
) -> None:  # fmt: skip
    tenants = tmp_path / "tenants.toml"
    tenants.write_text(tenants_toml("max_active_jobs = 1"))  # alpha: one job not yet finished at a time
    tc = make_client(tenants_file=tenants)
    train = upload(tc, jsonl(ROWS["text_label"] * 4), headers=A).json()["id"]
    request = JobCreate(model=str(model_root / "tiny-bert"), task=Task.classification, training_file=train,
                        method=LoraMethod(r=4))  # fmt: skip
    watched = create_job(redis, request, tenant="alpha", status="succeeded", results={"final": {"f1": 0.9}})
    upload(tc, jsonl(ROWS["text_label"] * 3), filename="new.jsonl", headers=A)
    hook = tc.post("/v1/webhooks", json={"url": "http://127.0.0.1:9/hook"}, headers=A)
    assert hook.status_code == 201, hook.text
    body = {"job_id": watched, "dataset": "new.jsonl", "schedule": "0 3 * * *", "retrain": True}
    mon = tc.post("/v1/monitors", json=body, headers=A).json()

    first = tc.post(f"/v1/monitors/{mon['id']}/run", headers=A)  # no worker: its evaluation job stays active
    assert first.status_code == 201 and first.json()["status"] == "evaluating", first.text
    assert_429(tc.post(f"/v1/monitors/{mon['id']}/run", headers=A), "quota_exceeded", "max_active_jobs", 1)
    assert [r["id"] for r in tc.get(f"/v1/monitors/{mon['id']}/runs", headers=A).json()["data"]] == [first.json()["id"]]

    # The scheduled run, as RQ's scheduler starts it in a worker (its settings from the environment): skipped.
    for name, value in {**env, "FTJOBS_TENANTS_FILE": str(tenants)}.items():
        monkeypatch.setenv(name, value)
    from ftjobs.jobs import monitor

    assert monitor.run({"tenant": "alpha", "monitor_id": mon["id"], "due": mon["next_run_at"]})["status"] == "skipped"
    skipped = tc.get(f"/v1/monitors/{mon['id']}/runs", headers=A).json()["data"][0]
    assert skipped["status"] == "skipped" and skipped["trigger"] == "schedule", skipped
    assert skipped["reason"] == "max_active_jobs" and "max_active_jobs" in skipped["warning"], skipped
    assert skipped["evaluation_job_id"] is None and skipped["file_id"] is not None, skipped
    outbox = [{k.decode(): v.decode() for k, v in e.items()} for _, e in redis.xrange(keys.WEBHOOK_OUTBOX_KEY)]
    event = next(e for e in outbox if e["type"] == "monitor.skipped")
    assert event["tenant"] == "alpha" and json.loads(event["data"])["id"] == skipped["id"]
    assert len(tc.get("/v1/jobs", params={"status": "validating_files"}, headers=A).json()["data"]) == 1

    # The evaluation concludes degraded while it still counts: no retraining job past the quota, and it says why.
    run = monitors.conclude(redis, tc.app.state.settings, "alpha", mon["id"], first.json()["id"], {"f1": 0.1})
    assert run is not None and run.status == "degraded" and run.retrain_job_id is None, run
    assert run.reason == "max_active_jobs" and "retraining job not started" in (run.warning or ""), run
    degraded = next(e for e in redis.xrange(keys.WEBHOOK_OUTBOX_KEY) if e[1][b"type"] == b"monitor.degraded")
    assert json.loads(degraded[1][b"data"])["reason"] == "max_active_jobs"
    assert len(tc.get("/v1/jobs", headers=A).json()["data"]) == 2  # the watched job and the evaluation

    # Its place freed, a run starts again.
    assert tc.post(f"/v1/jobs/{first.json()['evaluation_job_id']}/cancel", headers=A).status_code == 200
    again = tc.post(f"/v1/monitors/{mon['id']}/run", headers=A)
    assert again.status_code == 201 and again.json()["status"] == "evaluating", again.text


def test_runs_past_the_bound_move_to_the_store_and_the_history_reads_across(  # type: ignore[no-untyped-def]
    redis, make_client, watched: str
) -> None:  # fmt: skip
    tc = make_client(monitor_runs_kept=5)
    storage = tc.app.state.storage
    upload(tc, jsonl(ROWS["text_label"] * 3), filename="new.jsonl")
    mon = tc.post("/v1/monitors", json={"job_id": watched, "dataset": "new.jsonl", "schedule": "0 3 * * *"}).json()
    key, folder = monitors.runs_key("default", mon["id"]), monitors.monitor_dir("default", mon["id"])

    def run() -> dict[str, Any]:
        started = tc.post(f"/v1/monitors/{mon['id']}/run")
        assert started.status_code == 201, started.text
        return dict(started.json())

    def listed(limit: int) -> list[dict[str, Any]]:
        """Every run, page by page (the cursor as a client follows it)."""
        out: list[dict[str, Any]] = []
        params: dict[str, Any] = {"limit": limit}
        while True:
            page = tc.get(f"/v1/monitors/{mon['id']}/runs", params=params).json()
            out += page["data"]
            if not page["has_more"]:
                return out
            params["after"] = page["last_id"]

    first = run()  # evaluating (no worker): it stays in Redis while newer, finished runs are archived
    assert first["status"] == "evaluating", first
    upload(tc, jsonl(ROWS["prompt_completion"] * 3), filename="new.jsonl")  # the wrong format: runs fail at once
    made = [first] + [run() for _ in range(11)]
    newest_first = [r["id"] for r in reversed(made)]
    for limit in (5, 3, 100):
        assert [r["id"] for r in listed(limit)] == newest_first, limit
    in_redis = sorted(k.decode() for k in redis.hkeys(key))
    assert len(in_redis) == 5 and in_redis[0] == first["id"], in_redis  # the bound; the unfinished one kept
    segments = storage.names(f"{folder}/runs")
    archived = [json.loads(line) for s in segments for line in storage.open(f"{folder}/runs/{s}").read().splitlines()]
    assert sorted(r["id"] for r in archived) == sorted(set(newest_first) - set(in_redis))  # nothing twice or lost

    # Its evaluation job cancelled, the oldest run reads failed and goes with the next run past the bound.
    assert tc.post(f"/v1/jobs/{first['evaluation_job_id']}/cancel").status_code == 200
    made.append(run())
    history = listed(4)
    assert [r["id"] for r in history] == [r["id"] for r in reversed(made)]
    assert history[-1]["status"] == "failed" and "cancelled" in history[-1]["error"], history[-1]
    assert redis.hlen(key) == 5 and not redis.hexists(key, first["id"])

    assert tc.delete(f"/v1/monitors/{mon['id']}").status_code == 200
    assert not redis.exists(key) and not storage.exists(folder)


def test_a_run_leaves_redis_only_once_its_archive_is_written(  # type: ignore[no-untyped-def]
    redis, make_client, watched: str
) -> None:  # fmt: skip
    tc = make_client(monitor_runs_kept=2)
    storage = tc.app.state.storage
    mon = tc.post("/v1/monitors", json={"job_id": watched, "dataset": "none.jsonl", "schedule": "0 3 * * *"}).json()
    key, folder = monitors.runs_key("default", mon["id"]), monitors.monitor_dir("default", mon["id"])
    storage.write_bytes(f"{folder}/runs", b"")  # a file where the archive's folder goes: every archive write fails
    made = [tc.post(f"/v1/monitors/{mon['id']}/run").json()["id"] for _ in range(3)]
    assert redis.hlen(key) == 3  # none archived, none lost
    assert [r["id"] for r in tc.get(f"/v1/monitors/{mon['id']}/runs").json()["data"]] == made[::-1]
    storage.delete(f"{folder}/runs")
    made.append(tc.post(f"/v1/monitors/{mon['id']}/run").json()["id"])  # the store is back: the next run archives
    assert redis.hlen(key) == 2
    assert [r["id"] for r in tc.get(f"/v1/monitors/{mon['id']}/runs").json()["data"]] == made[::-1]
