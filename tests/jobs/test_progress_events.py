"""Progress outside training steps: a real tiny job's events and progress cover the baseline evaluation, the final
evaluation (batches and generated examples, each with an ETA) and the artifact upload (bytes), in that order."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

from ftjobs.client.models import Hyperparameters, JobCreate, LoraMethod
from tests.conftest import WorkerProcess
from tests.jobs.helpers import TENANT, events, read_job, submit, upload_rows, wait_for
from tests.jobs.test_train import qa_rows


def _phase_events(evs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in evs if isinstance(e.get("data"), dict) and e["data"].get("phase") in ("evaluating", "saving")]


def test_evaluation_and_saving_report_progress_in_order(redis, env, tmp_path: Path, tiny_causal_lm: Path) -> None:
    # The worker logs JSON lines (as in the container images): checked at the end.
    worker = WorkerProcess({**env, "FTJOBS_LOG_FORMAT": "json"}, tmp_path / "worker.log")
    try:
        _run(redis, env, worker, tiny_causal_lm)
    finally:
        worker.stop()
    lines = [line for line in worker.output().splitlines() if line.strip()]
    entries = [json.loads(line) for line in lines if not line.startswith("worker ")]  # its one print: the banner
    assert all({"time", "level", "logger", "message", "component"} <= set(e) for e in entries)
    assert any(e.get("job_id") and e.get("tenant") == TENANT for e in entries)  # lines of a job name it
    assert not any(e["logger"].startswith("rq.") and e["level"] == "INFO" for e in entries)
    assert "\x1b[" not in worker.output()


def _run(redis: Any, env: dict[str, str], worker: WorkerProcess, tiny_causal_lm: Path) -> None:
    request = JobCreate(
        model=str(tiny_causal_lm),
        training_file=upload_rows(env, qa_rows(16)),
        validation_file=upload_rows(env, qa_rows(24)),
        method=LoraMethod(r=4, alpha=8),
        hyperparameters=Hyperparameters(n_epochs=1, batch_size=4, max_seq_length=48, max_steps=3),
        eval_generation_limit=6,
        eval_samples=2,
    )
    job_id = submit(redis, env, request)
    seen: list[dict[str, Any]] = []  # the record's progress, sampled while the job runs
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            progress = read_job(redis, job_id, TENANT).get("progress") or {}
            if progress and (not seen or seen[-1] != progress):
                seen.append(progress)
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        job = wait_for(redis, job_id, worker=worker, timeout=600)
    finally:
        done.set()
        sampler.join(10)
    assert job["status"] == "succeeded", (job.get("error"), worker.output()[-3000:])

    evs = events(redis, job_id)
    phases = _phase_events(evs)
    labels = [e["data"]["label"] for e in phases]
    # Baseline: the Trainer's evaluation batch by batch (24 rows / 4 = 6 batches), then its generation pass.
    baseline = [e for e in phases if e["data"]["label"] == "baseline evaluation"]
    assert baseline and all(e["data"]["unit"] == "batches" and e["data"]["total"] == 6 for e in baseline)
    assert baseline[-1]["data"]["done"] == 6 and baseline[-1]["message"].startswith("baseline evaluation: done")
    running = [e for e in baseline if e["data"]["done"] < e["data"]["total"]]
    assert running and all(e["data"]["eta_seconds"] > 0 for e in running)  # no "ETA 0.0" while it runs
    generation = {label: [e for e in phases if e["data"]["label"] == label] for label in labels}
    assert generation["baseline generation"][-1]["data"]["done"] == 6

    # The order of the story: baseline evaluation -> training -> final evaluation -> upload -> succeeded.
    index = {id(e): i for i, e in enumerate(evs)}
    first_train = min(i for i, e in enumerate(evs) if e["type"] == "metrics" and e["data"].get("split") == "train")
    assert max(index[id(e)] for e in phases if e["data"]["label"].startswith("baseline")) < first_train
    after = [e for e in phases if index[id(e)] > first_train]
    assert [e["data"]["phase"] for e in after][-1] == "saving"
    assert "final generation" in [e["data"]["label"] for e in after]
    evaluating_after = [i for i, e in enumerate(after) if e["data"]["phase"] == "evaluating"]
    saving = [i for i, e in enumerate(after) if e["data"]["phase"] == "saving"]
    assert max(evaluating_after) < min(saving)

    # The upload counts bytes, and they add up to what the job published.
    uploads = [after[i] for i in saving]
    total = sum(a["bytes"] for a in job["artifacts"])
    assert all(e["data"]["unit"] == "bytes" and e["data"]["total"] == total for e in uploads)
    assert uploads[-1]["data"]["done"] == total and "done" in uploads[-1]["message"]
    succeeded = max(i for i, e in enumerate(evs) if e["type"] == "status")
    assert index[id(uploads[-1])] < succeeded

    # The record's progress named the phase while it ran; an evaluation's ETA was never 0.0 mid-way.
    assert {p.get("phase") for p in seen} <= {None, "training", "evaluating", "saving"}
    for p in seen:
        if p.get("phase") == "evaluating" and p.get("phase_total") and (p.get("phase_done") or 0) < p["phase_total"]:
            assert p["eta_seconds"] is None or p["eta_seconds"] > 0
    assert job["progress"]["phase"] == "saving" and job["progress"]["phase_done"] == total
    print("phases seen in the record:", [p.get("phase") for p in seen])
    print("\n".join(e["message"] for e in phases))
