"""Warm starts and the thread budget: one worker that preloaded torch forks horse after horse that work.

Real worker processes, a real Redis and the tiny causal LM. What is observed is the processes themselves: the
libraries mapped into the worker (/proc/PID/maps), the
thread count torch reports inside each horse (its log line) and where each job ends.
"""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

from tests.conftest import WorkerProcess
from tests.jobs.helpers import eventually, submit, wait_for
from tests.jobs.test_reliability import children, new_horse, request

BUDGET = "1"  # not the machine's core count (>= 2 here), so a default could not pass for it


def torch_mapped(pid: int) -> bool:
    """Whether the process has torch's shared library loaded."""
    return "libtorch" in Path(f"/proc/{pid}/maps").read_text()


def listening(worker: WorkerProcess) -> bool:
    assert worker.proc.poll() is None, worker.output()[-3000:]
    return "listening on" in worker.output()


def horses(worker: WorkerProcess) -> list[int]:
    """The worker's forked work horses (its other children, such as its hardware probe, run something else)."""
    found = []
    for pid in children(worker.proc.pid):
        try:
            if b"ftjobs.jobs.worker" in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(pid)
        except OSError:
            continue
    return found


def horse_threads(worker: WorkerProcess) -> list[str]:
    """The torch thread count each horse that finished its job reported (`-`: it never loaded torch)."""
    return re.findall(r"work horse \d+: (\S+) torch threads", worker.output())


def test_a_preloaded_worker_runs_jobs_in_a_row_and_recovers_a_killed_horse(
    redis, env, tiny_causal_lm: Path, tmp_path: Path
) -> None:
    worker = WorkerProcess({**env, "FTJOBS_TORCH_THREADS": BUDGET, "FTJOBS_PRELOAD": "1"}, tmp_path / "worker.log")
    try:
        assert eventually(lambda: listening(worker), timeout=180), worker.output()[-3000:]
        assert torch_mapped(worker.proc.pid), "the worker did not preload torch"

        first = submit(redis, env, request(tiny_causal_lm, env), validate=True)  # a validation horse, then training
        assert wait_for(redis, first, worker=worker, timeout=300)["status"] == "succeeded"

        # Killed twice: right after dequeue (a preloaded horse writes within milliseconds, so before or just
        # after its first write: either way the worker requeues it at once), then mid-training.
        assert eventually(lambda: not horses(worker), timeout=60)  # the first job's horses are gone
        crashed = submit(redis, env, request(tiny_causal_lm, env, n_epochs=3))
        os.kill(new_horse(worker, set()), signal.SIGKILL)
        wait_for(redis, crashed, ["running"], worker=worker, timeout=300, until=lambda r: r["attempt"] == 2)
        running = horses(worker)
        assert len(running) == 1, running
        os.kill(running[0], signal.SIGKILL)
        job = wait_for(redis, crashed, worker=worker, timeout=300)
        assert job["status"] == "succeeded" and job["attempt"] == 3, job

        last = submit(redis, env, request(tiny_causal_lm, env))
        assert wait_for(redis, last, worker=worker, timeout=300)["status"] == "succeeded"
        assert worker.proc.poll() is None  # one worker process served every job
    finally:
        worker.stop()
    # validation + training, the killed attempts' retry, the last job: each horse that finished ran with the budget
    assert horse_threads(worker) == [BUDGET] * 4, worker.output()[-3000:]


def test_with_preload_off_the_worker_never_loads_torch_and_horses_still_get_the_budget(
    redis, env, tiny_causal_lm: Path, tmp_path: Path
) -> None:
    worker = WorkerProcess({**env, "FTJOBS_TORCH_THREADS": BUDGET, "FTJOBS_PRELOAD": "0"}, tmp_path / "worker.log")
    try:
        assert eventually(lambda: listening(worker), timeout=180), worker.output()[-3000:]
        job_id = submit(redis, env, request(tiny_causal_lm, env))
        assert wait_for(redis, job_id, worker=worker, timeout=300)["status"] == "succeeded"
        time.sleep(0.5)
        assert not torch_mapped(worker.proc.pid), "FTJOBS_PRELOAD=0 but the worker loaded torch"
    finally:
        worker.stop()
    # no torch.set_num_threads before the job (torch was not loaded): OMP_NUM_THREADS from the worker did it
    assert horse_threads(worker) == [BUDGET], worker.output()[-3000:]
