"""No job stranded: horses and workers killed at the worst moment, preemption by SIGTERM, cancels of slow steps.

Real worker processes, a real Redis and the tiny causal LM; processes are killed with real signals. Waits are
generous (a slow machine is not a failure); what is asserted is where each job ends and how it got there.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from ftjobs.client.models import Hyperparameters, JobCreate, LoraMethod
from ftjobs.core import keys
from ftjobs.core.fleet import hardware_key
from tests.conftest import WorkerProcess
from tests.jobs.helpers import (
    create_job,
    events,
    guarded_write,
    metric_points,
    read_job,
    store_root,
    submit,
    upload_rows,
    wait_for,
)

ROWS = [{"prompt": f"count to {n} :", "completion": " ".join(str(i) for i in range(1, n + 1))} for n in range(1, 9)]


def request(model: Path, env: dict[str, str], rows: list[dict[str, Any]] = ROWS, **hp: Any) -> JobCreate:
    return JobCreate(
        model=str(model),
        training_file=upload_rows(env, rows),
        method=LoraMethod(r=4, alpha=8),
        hyperparameters=Hyperparameters(**{"n_epochs": 1, "batch_size": 4, "max_seq_length": 32, **hp}),
    )


def children(pid: int) -> list[int]:
    """Live child processes of `pid` (zombies excluded)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(stat[1]) == pid and stat[0] != "Z":
            found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return stat[0] != "Z"


def new_horse(worker: WorkerProcess, seen: set[int], timeout: float = 120) -> int:
    """The first work horse of `worker` not in `seen`, as soon as it is forked (polled every 5 ms)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for pid in children(worker.proc.pid):
            if pid not in seen and _is_horse(pid):
                seen.add(pid)
                return pid
        assert worker.proc.poll() is None, worker.output()[-3000:]
        time.sleep(0.005)
    raise AssertionError(f"no new work horse after {timeout} s:\n{worker.output()[-3000:]}")


def probed(redis: Any, timeout: float = 120) -> None:
    """Wait until the worker recorded its hardware: its probe child, forked and not yet exec'd, looks like a horse."""
    deadline = time.monotonic() + timeout
    while not redis.keys(hardware_key("*")):
        assert time.monotonic() < deadline, "the worker never recorded its hardware"
        time.sleep(0.05)


def _is_horse(pid: int) -> bool:
    """A forked work horse runs the worker's command line; the worker's other children (its hardware probe) not."""
    try:
        return b"ftjobs.jobs.worker" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def drain(worker: WorkerProcess) -> float:
    """SIGTERM a worker as a deploy does; it must exit 0. Returns the seconds it took."""
    stopped = time.monotonic()
    worker.proc.send_signal(signal.SIGTERM)
    assert worker.proc.wait(timeout=120) == 0, worker.output()[-3000:]
    return time.monotonic() - stopped


def statuses(redis: Any, job_id: str) -> list[tuple[str, int]]:
    return [(e["data"]["status"], e["data"]["attempt"]) for e in events(redis, job_id) if e["type"] == "status"]


def assert_one_point_per_step(redis: Any, job_id: str) -> None:
    """No step logged twice (an evaluation writes its loss and its generation scores as two points of one step)."""
    points = [(p["split"], p["step"], tuple(sorted(p["values"]))) for p in metric_points(redis, job_id)]
    assert len(points) == len(set(points)), points
    for split in ("train", "eval"):
        steps = [step for s, step, _ in points if s == split]
        assert steps == sorted(steps), (split, steps)


def test_a_training_horse_killed_right_after_dequeue_is_recovered_every_time(
    redis, env, tiny_causal_lm: Path, tmp_path: Path
) -> None:
    # preload off: this tests the window before the job's first write, which a preloaded horse only narrows
    worker = WorkerProcess({**env, "FTJOBS_MAX_ATTEMPTS": "5", "FTJOBS_PRELOAD": "0"}, tmp_path / "worker.log")
    try:
        probed(redis)
        job_id = submit(redis, env, request(tiny_causal_lm, env))
        seen: set[int] = set()
        recovered_in = []
        for attempt in (1, 2):  # the first attempt and its retry, each before the job's first write
            horse = new_horse(worker, seen)
            os.kill(horse, signal.SIGKILL)
            killed = time.monotonic()
            wait_for(
                redis, job_id, ["queued"], worker=worker, timeout=120, until=lambda r, a=attempt: r["attempt"] == a + 1
            )
            recovered_in.append(time.monotonic() - killed)
        job = wait_for(redis, job_id, worker=worker, timeout=300)
    finally:
        worker.stop()
    assert job["status"] == "succeeded" and job["attempt"] == 3, job
    # Never started before the kills (nothing to resume), requeued by the worker itself, not by a stale heartbeat.
    assert statuses(redis, job_id) == [("queued", 2), ("queued", 3), ("running", 3), ("succeeded", 3)]
    requeues = [e["message"] for e in events(redis, job_id) if e["data"].get("previous_attempt")]
    assert all("killed by signal 9" in m for m in requeues), requeues
    assert max(recovered_in) < 30, recovered_in  # FTJOBS_STALE_AFTER_S is 60 here: the worker did not wait for it
    assert redis.zcard(keys.HEARTBEATS_KEY) == 0
    assert not redis.sismember(keys.ACTIVE_JOBS_KEY, keys.active_member("default", job_id))


def test_a_validation_horse_killed_right_after_dequeue_validates_again(
    redis, env, tiny_causal_lm: Path, tmp_path: Path
) -> None:
    # preload off: this tests the window before the job's first write, which a preloaded horse only narrows
    worker = WorkerProcess({**env, "FTJOBS_MAX_ATTEMPTS": "5", "FTJOBS_PRELOAD": "0"}, tmp_path / "worker.log")
    try:
        probed(redis)
        job_id = submit(redis, env, request(tiny_causal_lm, env), validate=True)
        seen: set[int] = set()
        for tries in (2, 3):
            os.kill(new_horse(worker, seen), signal.SIGKILL)
            wait_for(
                redis,
                job_id,
                ["validating_files"],
                worker=worker,
                timeout=120,
                until=lambda r, t=tries: r["resolved"].get("validation_attempts") == t,
            )
        job = wait_for(redis, job_id, worker=worker, timeout=300)
    finally:
        worker.stop()
    assert job["status"] == "succeeded" and job["attempt"] == 1, job
    messages = [e["message"] for e in events(redis, job_id)]
    assert sum("killed by signal 9 while validating files; validating again" in m for m in messages) == 2, messages
    assert job["resolved"]["validation_runs"] == 3


def test_a_worker_killed_with_its_horse_is_recovered_by_another_workers_reconciler(
    redis, env, tiny_causal_lm: Path, tmp_path: Path
) -> None:
    fast = {**env, "FTJOBS_STALE_AFTER_S": "3", "FTJOBS_MAX_ATTEMPTS": "3", "FTJOBS_PRELOAD": "0"}  # as above
    second = None
    # A round whose kill lands after the job's first write (a loaded machine: the horse outran the test) tests
    # nothing: it is dropped (Redis flushed, no worker alive) and tried again, at most three times.
    for round_ in range(3):
        first = WorkerProcess(fast, tmp_path / f"first-{round_}.log")
        try:
            probed(redis)
            job_id = submit(redis, env, request(tiny_causal_lm, env))
            horse = new_horse(first, set())
            first.proc.kill()  # the whole worker: its horse goes with it (PR_SET_PDEATHSIG)
            first.proc.wait()
            deadline = time.monotonic() + 10
            while alive(horse) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert not alive(horse), "the work horse outlived its worker"
            status = read_job(redis, job_id)["status"]
        finally:
            first.stop()
        if status == "queued":  # RQ took it, but it never started
            break
        redis.flushall()
    else:
        pytest.fail("in three rounds the worker's kill never landed before the job's first write")
    try:
        second = WorkerProcess(fast, tmp_path / "second.log")
        job = wait_for(redis, job_id, worker=second, timeout=300)
    finally:
        if second is not None:
            second.stop()
    assert job["status"] == "succeeded" and job["attempt"] == 2, job
    lost = [e["message"] for e in events(redis, job_id) if e["data"].get("previous_attempt") == 1]
    assert len(lost) == 1 and "worker lost (no heartbeat" in lost[0], lost


def test_a_queued_job_whose_rq_job_vanished_is_enqueued_again(redis, env, tiny_causal_lm: Path, tmp_path: Path) -> None:
    # As the API leaves a job after validation, but the RQ job is gone (Redis lost it, or the enqueue never ran).
    job_id = create_job(redis, request(tiny_causal_lm, env))
    redis.sadd(keys.ACTIVE_JOBS_KEY, keys.active_member("default", job_id))
    worker = WorkerProcess({**env, "FTJOBS_STALE_AFTER_S": "2"}, tmp_path / "worker.log")
    try:
        job = wait_for(redis, job_id, worker=worker, timeout=300)
    finally:
        worker.stop()
    assert job["status"] == "succeeded" and job["attempt"] == 2, job
    first = events(redis, job_id)[0]
    assert "RQ job" in first["message"] and "missing" in first["message"], first


def test_sigterm_checkpoints_hands_the_job_back_and_it_resumes(
    redis, env, tiny_causal_lm: Path, tmp_path: Path
) -> None:
    # Checkpoints on, but none due by time or steps: the one the job resumes from is the preemption's.
    settings = {**env, "FTJOBS_CHECKPOINT_STEPS": "1000", "FTJOBS_PREEMPT_S": "60", "FTJOBS_MAX_ATTEMPTS": "1"}
    first = WorkerProcess(settings, tmp_path / "first.log")
    job_id = submit(redis, env, request(tiny_causal_lm, env, batch_size=1, max_steps=60))
    try:
        wait_for(
            redis, job_id, ["running"], worker=first, timeout=300, until=lambda r: r["progress"].get("step", 0) >= 5
        )
        stop_seconds = drain(first)
    finally:
        first.stop()
    job = read_job(redis, job_id)
    # Back in the queue as attempt 2, and the preemption did not spend an attempt (the limit here is 1).
    assert (job["status"], job["attempt"], job["resolved"]["free_attempts"]) == ("queued", 2, 1), job
    handed = next(e for e in events(redis, job_id) if "handing the job back" in e["message"])
    step = handed["data"]["step"]
    assert handed["data"]["checkpoint_step"] == step >= 5
    pointer = store_root(env) / keys.checkpoint_pointer_path("default", job_id)
    assert pointer.is_file()
    print(f"SIGTERM -> worker exited in {stop_seconds:.1f} s, checkpoint at step {step}")

    second = WorkerProcess(settings, tmp_path / "second.log")
    try:
        job = wait_for(redis, job_id, worker=second, timeout=300)
    finally:
        second.stop()
    assert job["status"] == "succeeded" and job["attempt"] == 2 and job["progress"]["step"] == 60, job
    assert job["results"]["resumed_from_step"] == step
    assert any(
        f"resuming from checkpoint at step {step} (saved by attempt 1)" in e["message"] for e in events(redis, job_id)
    )
    assert_one_point_per_step(redis, job_id)
    train_steps = [p["step"] for p in metric_points(redis, job_id) if p["split"] == "train"]
    assert train_steps == list(range(1, 61))
    assert not (store_root(env) / keys.checkpoints_dir("default", job_id)).exists()


# --------------------------------------------------------------------------------------------- slow steps

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma tau".split()


def slow_request(model: Path, env: dict[str, str]) -> JobCreate:
    """One optimizer step over ~1M tokens (4,096 long examples): a minute or more on a laptop CPU."""
    rows = [{"text": " ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(300))} for i in range(4096)]
    return request(
        model, env, rows, batch_size=32, gradient_accumulation_steps=128, max_seq_length=256, validation_split=0.0
    )


def wait_in_first_step(redis: Any, job_id: str, worker: WorkerProcess) -> None:
    """Until the job has trained a few seconds without finishing its first step."""
    wait_for(redis, job_id, ["running"], worker=worker, timeout=300, until=lambda r: "total_steps" in r["resolved"])
    deadline = time.monotonic() + 300
    while not any("parameters" in e["message"] for e in events(redis, job_id)):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    time.sleep(5)
    assert read_job(redis, job_id)["progress"].get("step", 0) == 0, "the step was not slow enough to test this"


@pytest.mark.timeout(900)
def test_cancel_lands_in_seconds_inside_a_step_that_takes_minutes(
    redis, env, tiny_causal_lm: Path, tmp_path: Path
) -> None:
    worker = WorkerProcess(env, tmp_path / "worker.log")  # heartbeat 1 s (tests' default)
    try:
        job_id = submit(redis, env, slow_request(tiny_causal_lm, env))
        wait_in_first_step(redis, job_id, worker)
        asked = time.monotonic()
        assert guarded_write(redis, job_id, {"cancel_requested": True}, statuses=["running"])
        job = wait_for(redis, job_id, worker=worker, timeout=120)
        landed = time.monotonic() - asked
    finally:
        worker.stop()
    assert job["status"] == "cancelled" and job["progress"]["step"] == 0, job
    assert landed < 20, landed  # heartbeat poll (1 s) + grace (3 s) + unwinding, against a step of a minute or more
    print(f"cancel landed {landed:.1f} s after the request, mid-step")


@pytest.mark.timeout(900)
def test_sigterm_inside_a_step_that_takes_minutes_hands_the_job_back_in_bounded_time(
    redis, env, tiny_causal_lm: Path, tmp_path: Path
) -> None:
    worker = WorkerProcess({**env, "FTJOBS_PREEMPT_S": "8"}, tmp_path / "worker.log")
    try:
        job_id = submit(redis, env, slow_request(tiny_causal_lm, env))
        wait_in_first_step(redis, job_id, worker)
        took = drain(worker)
    finally:
        worker.stop()
    job = read_job(redis, job_id)
    assert (job["status"], job["attempt"], job["resolved"]["free_attempts"]) == ("queued", 2, 1), job
    assert took < 8 + 10, took  # the bound, plus the worker's own exit
    print(f"SIGTERM inside a slow step: the worker exited after {took:.1f} s")


def test_jobs_from_before_the_active_set_are_backfilled_once(redis, env, tiny_causal_lm: Path) -> None:
    from ftjobs.core.settings import Settings
    from ftjobs.jobs.reconcile import Reconciler

    queued = create_job(redis, request(tiny_causal_lm, env))  # written as an older API did: no active entry
    running = create_job(redis, request(tiny_causal_lm, env), tenant="acme", status="running")
    finished = create_job(redis, request(tiny_causal_lm, env), status="succeeded")
    reconciler = Reconciler(redis, Settings.from_env(env))
    assert reconciler.backfill_active() == 2
    members = {m.decode() for m in redis.smembers(keys.ACTIVE_JOBS_KEY)}
    assert members == {keys.active_member("default", queued), keys.active_member("acme", running)}
    assert finished not in str(members)
    redis.delete(keys.ACTIVE_JOBS_KEY)
    assert reconciler.backfill_active() == 0  # once per deployment: later jobs are added by the API
