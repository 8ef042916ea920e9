"""A worker runs only ftjobs' own job functions: anything else on its queues is refused, logged and never run."""

from __future__ import annotations

import time
from pathlib import Path

from redis import Redis
from rq import Queue
from rq.job import JobStatus as RQStatus
from rq.serializers import JSONSerializer

from ftjobs.core.queue import VALIDATE_FUNC
from tests.conftest import QUEUE, WorkerProcess


def test_a_foreign_function_on_our_queues_is_never_run(redis: Redis, worker: WorkerProcess, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    queues = [Queue(name, connection=redis, serializer=JSONSerializer) for name in (QUEUE, "ftjobs-validate")]
    foreign = [
        queues[0].enqueue("os.system", f"touch {marker}"),  # any importable function, as a local process could
        queues[1].enqueue("os.system", f"touch {marker}"),  # the validation queue every worker serves first
        queues[1].enqueue(VALIDATE_FUNC, payload={"job_id": "ftjob-x"}),  # ours by name, but not a valid payload
        queues[0].enqueue("os.getcwd"),
    ]
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not all(j.get_status(refresh=True) == RQStatus.FAILED for j in foreign):
        time.sleep(0.5)
    assert [j.get_status(refresh=True) for j in foreign] == [RQStatus.FAILED] * 4, worker.output()[-3000:]
    assert not marker.exists()
    assert worker.output().count("is not an ftjobs job") == 4
    assert worker.proc.poll() is None  # and the worker goes on serving
