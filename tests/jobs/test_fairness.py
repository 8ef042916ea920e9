"""Fair scheduling between tenants: a backlog waits outside RQ, tenants take turns, limits and priorities hold.

Real Redis, the real JobQueue and admission scripts, the real API for submits and cancels, real worker processes
(a `--validate-only` worker beside `--train-only` ones, as a deployment with an accelerator pool runs them).
Timings are printed (`-s`); what is asserted is the order jobs start in, never how fast the machine is.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from rq import Queue
from rq.serializers import JSONSerializer

from ftjobs.client.models import Hyperparameters, JobCreate, LoraMethod
from ftjobs.core.admission import Line
from ftjobs.core.queue import rq_job_id
from ftjobs.core.settings import Settings
from ftjobs.jobs.reconcile import Reconciler
from tests.conftest import QUEUE, REPO, WorkerProcess
from tests.jobs.helpers import VALIDATE_QUEUE, create_job, events, eventually, job_queue, read_job, upload_rows

ROWS = [{"prompt": f"count to {n} :", "completion": " ".join(str(i) for i in range(1, n + 1))} for n in range(1, 9)]
KEYS = {"a": "key-of-tenant-a", "b": "key-of-tenant-b"}
TINY = {"n_epochs": 1, "batch_size": 4, "max_seq_length": 32, "max_steps": 2}


class Worker(WorkerProcess):
    """`python -m ftjobs.jobs.worker` with extra flags (`--validate-only`, `--train-only`)."""

    def __init__(self, env: dict[str, str], log: Path, *flags: str) -> None:
        self.log = log
        self._fh = open(log, "wb")  # noqa: SIM115 - closed in stop()
        cmd = [sys.executable, "-m", "ftjobs.jobs.worker", "--queue", env["FTJOBS_QUEUE"], *flags]
        full_env = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=full_env, stdout=self._fh, stderr=subprocess.STDOUT)


@pytest.fixture
def workers(env: dict[str, str], tmp_path: Path) -> Iterator[Any]:
    """Start workers on demand; every one is stopped at the end."""
    started: list[Worker] = []

    def start(*flags: str, extra: dict[str, str] | None = None) -> Worker:
        w = Worker({**env, **(extra or {})}, tmp_path / f"worker-{len(started)}.log", *flags)
        started.append(w)
        return w

    yield start
    for w in started:
        w.stop()


class AsTenant:
    """The real app's TestClient, sending one tenant's API key."""

    def __init__(self, tc: TestClient, key: str) -> None:
        self.tc, self.auth = tc, {"Authorization": f"Bearer {key}"}

    def post(self, url: str, **kw: Any) -> Any:
        return self.tc.post(url, headers=self.auth, **kw)


def upload(api: AsTenant, rows: list[dict[str, Any]]) -> str:
    content = "".join(json.dumps(r) + "\n" for r in rows).encode()
    response = api.post("/v1/files", files={"file": ("train.jsonl", content, "application/jsonl")})
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def request(model: Path, file_id: str, **changes: Any) -> JobCreate:
    return JobCreate(
        model=str(model),
        training_file=file_id,
        method=LoraMethod(r=4, alpha=8),
        hyperparameters=Hyperparameters(**TINY),
        eval_generation_limit=0,
        eval_samples=0,
        **changes,
    )


def started_at(redis: Any, job_id: str, tenant: str, what: str) -> float | None:
    """When the job's validation ("validation") or its first training attempt ("training") started."""
    for e in events(redis, job_id, tenant):
        message = e["message"]
        if what == "validation" and (message == "validating files" or message.startswith("validating files on ")):
            return float(e["created_at"])
        if what == "training" and e["type"] == "status" and e["data"].get("status") == "running":
            return float(e["created_at"])
    return None


def ran(redis: Any, job_id: str, tenant: str) -> tuple[float, float] | None:
    """(start, end) of the job's training run, from its status events."""
    start = end = None
    for e in events(redis, job_id, tenant):
        status = e["data"].get("status") if e["type"] == "status" else None
        if status == "running" and start is None:
            start = float(e["created_at"])
        elif status in ("succeeded", "failed", "cancelled") and start is not None:
            end = float(e["created_at"])
    return (start, end) if start is not None and end is not None else None


def rq_list(redis: Any, name: str) -> list[str]:
    return list(Queue(name, connection=redis, serializer=JSONSerializer).job_ids)


# ----------------------------------------------------------------------------- the lines, without a worker


def test_a_backlog_waits_outside_rq_and_tenants_take_turns(redis, env, tiny_causal_lm: Path) -> None:
    queue = job_queue(redis, env)
    file_id = upload_rows(env, ROWS)
    new = {"status": "validating_files", "attempt": 0}
    a = [create_job(redis, request(tiny_causal_lm, file_id), "a", **new) for _ in range(50)]
    for job_id in a:
        queue.enqueue_validation("a", job_id)
    b = create_job(redis, request(tiny_causal_lm, file_id), "b", status="validating_files", attempt=0)
    queue.enqueue_validation("b", b)

    # RQ holds one job of each tenant; A's other 49 wait in A's line, in submission order.
    assert rq_list(redis, VALIDATE_QUEUE) == [f"{a[0]}-0", f"{b}-0"]
    line_a = Line(VALIDATE_QUEUE, "a", training=False)
    assert queue.admission.pending(line_a) == [f"{j}-0" for j in a[1:]]
    assert queue.state(f"{a[1]}-0") == "pending" and queue.state(f"{a[0]}-0") == "waiting"
    # A worker takes A's first (RQ's dequeue, then ours): A's second joins RQ behind B's one job.
    redis.lpop(f"rq:queue:{VALIDATE_QUEUE}")
    assert queue.admission.take(line_a, f"{a[0]}-0") == [f"{a[1]}-0"]
    assert rq_list(redis, VALIDATE_QUEUE) == [f"{b}-0", f"{a[1]}-0"]
    # A preempted job goes back first: to RQ's front, even past the one-waiting-per-tenant cap.
    queue.enqueue_validation("a", a[0], run=2, at_front=True)
    assert rq_list(redis, VALIDATE_QUEUE) == [rq_job_id(a[0], 0, 2), f"{b}-0", f"{a[1]}-0"]


def test_priority_orders_a_tenants_own_line(redis, env, tiny_causal_lm: Path) -> None:
    queue = job_queue(redis, env)
    file_id = upload_rows(env, ROWS)
    priorities = [0, 0, 5, -3, 5, 10]
    ids = [create_job(redis, request(tiny_causal_lm, file_id, priority=p), "a") for p in priorities]
    for job_id in ids:
        queue.enqueue_attempt("a", job_id, 1)
    line = Line(QUEUE, "a", training=True)
    order = [rq_list(redis, QUEUE)[0]]  # the first came to an empty line: it went straight in
    while True:
        queue.admission.take(line, order[-1])
        queue.admission.release(line, order[-1])
        waiting = rq_list(redis, QUEUE)
        redis.delete(f"rq:queue:{QUEUE}")  # as a worker's dequeue does
        if not waiting:
            break
        order += waiting
    by_priority = [ids[i] for i in (0, 5, 2, 4, 1, 3)]  # 10, then the two 5s and the two 0s in submission order
    assert order == [f"{j}-1" for j in by_priority]
    with pytest.raises(ValueError):
        request(tiny_causal_lm, file_id, priority=11)


def test_the_reconciler_readmits_a_line_a_crash_left_stuck(redis, env, tiny_causal_lm: Path) -> None:
    settings = Settings.from_env({**env, "FTJOBS_STALE_AFTER_S": "5"})
    limits = Path(env["FTJOBS_DATA_DIR"]) / "tenants.toml"
    limits.parent.mkdir(parents=True, exist_ok=True)
    limits.write_text("[tenants.a]\nmax_running_jobs = 1\n")
    settings = settings.model_copy(update={"tenants_file": limits})
    reconciler = Reconciler(redis, settings)
    queue = reconciler.queue
    file_id = upload_rows(env, ROWS, "a")
    a = [create_job(redis, request(tiny_causal_lm, file_id), "a") for _ in range(3)]
    for job_id in a:
        queue.enqueue_attempt("a", job_id, 1)
    line = Line(QUEUE, "a", training=True)
    # A worker dequeued A's first and died before its take: not in RQ, no lease, still holding A's one slot.
    assert redis.lpop(f"rq:queue:{QUEUE}") == f"{a[0]}-1".encode()
    assert reconciler.sweep_admission(time.time()) == 0  # too recent to judge: it may be starting right now
    assert rq_list(redis, QUEUE) == [] and queue.admission.pending(line) == [f"{a[1]}-1", f"{a[2]}-1"]

    later = time.time() + 10  # past stale_after_s
    assert reconciler.sweep_admission(later) == 1
    assert rq_list(redis, QUEUE) == [f"{a[1]}-1"] and list(queue.admission.slots("a")) == [f"{a[1]}-1"]
    # A job waiting in RQ is never freed, however long it waits; nothing more fits under A's limit.
    assert reconciler.sweep_admission(later + 60) == 0 and rq_list(redis, QUEUE) == [f"{a[1]}-1"]


# ----------------------------------------------------------------------------- through the API, with workers


@pytest.fixture
def tenants_api(settings: Settings) -> Iterator[dict[str, AsTenant]]:
    """The real app with two tenants' keys: {tenant: a client sending that tenant's key}."""
    from ftjobs.service.main import create_app

    app = create_app(settings.model_copy(update={"api_keys": {key: t for t, key in KEYS.items()}}))
    with TestClient(app, raise_server_exceptions=False) as tc:
        yield {tenant: AsTenant(tc, key) for tenant, key in KEYS.items()}


def submit(api: AsTenant, model: Path, file_id: str, **changes: Any) -> str:
    response = api.post("/v1/jobs", json=request(model, file_id, **changes).model_dump(mode="json"))
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def test_b_starts_before_as_third_job_in_validation_and_training(
    redis, env, tiny_causal_lm: Path, tenants_api: dict[str, AsTenant], workers: Any
) -> None:
    files = {t: upload(api, ROWS) for t, api in tenants_api.items()}
    t0 = time.monotonic()
    a = [submit(tenants_api["a"], tiny_causal_lm, files["a"]) for _ in range(50)]
    submitted_a = time.monotonic() - t0
    b_submitted = time.time()
    b = submit(tenants_api["b"], tiny_causal_lm, files["b"])
    workers("--validate-only")
    trainer = workers("--train-only")

    assert eventually(lambda: started_at(redis, b, "b", "validation") is not None, timeout=300), trainer.output()
    b_validation = started_at(redis, b, "b", "validation")
    for job_id in a[3:]:  # the order is seen: only A's first three are needed to see it in training too
        assert tenants_api["a"].post(f"/v1/jobs/{job_id}/cancel").status_code in (200, 409)
    assert eventually(lambda: started_at(redis, a[2], "a", "validation") is not None, timeout=300)
    validation = {j: started_at(redis, j, "a", "validation") for j in a[:3]}

    def third_trains() -> bool:
        return started_at(redis, a[2], "a", "training") is not None

    assert eventually(third_trains, timeout=600), trainer.output()[-3000:]
    training = {j: started_at(redis, j, "a", "training") for j in a[:3]}
    b_training = started_at(redis, b, "b", "training")
    for job_id in [*a[:3], b]:
        tenant = "b" if job_id == b else "a"
        tenants_api[tenant].post(f"/v1/jobs/{job_id}/cancel")

    assert b_validation is not None and b_training is not None
    print(
        f"\nA submitted 50 jobs in {submitted_a:.1f} s; B's job: validation started "
        f"{b_validation - b_submitted:.1f} s after its submit, training {b_training - b_submitted:.1f} s after"
        f"\nvalidation starts (s after B's submit): A1 {validation[a[0]] - b_submitted:.1f}, "  # type: ignore[operator]
        f"A2 {validation[a[1]] - b_submitted:.1f}, B {b_validation - b_submitted:.1f}, "  # type: ignore[operator]
        f"A3 {validation[a[2]] - b_submitted:.1f}"  # type: ignore[operator]
        f"\ntraining starts (s after B's submit): A1 {training[a[0]] - b_submitted:.1f}, "  # type: ignore[operator]
        f"A2 {training[a[1]] - b_submitted:.1f}, B {b_training - b_submitted:.1f}, "  # type: ignore[operator]
        f"A3 {training[a[2]] - b_submitted:.1f}"  # type: ignore[operator]
    )
    assert b_validation < validation[a[2]]  # type: ignore[operator]
    assert b_training < training[a[2]]  # type: ignore[operator]


def test_cancelling_a_pending_job_takes_it_out_of_its_line(
    redis, env, tiny_causal_lm: Path, tenants_api: dict[str, AsTenant], workers: Any
) -> None:
    api = tenants_api["a"]
    file_id = upload(api, ROWS)
    first, second, third = (submit(api, tiny_causal_lm, file_id) for _ in range(3))
    line = Line(VALIDATE_QUEUE, "a", training=False)
    assert rq_list(redis, VALIDATE_QUEUE) == [f"{first}-0"]

    cancelled = api.post(f"/v1/jobs/{second}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert job_queue(redis, env).admission.pending(line) == [f"{third}-0"]
    api.post(f"/v1/jobs/{first}/cancel")  # the one in RQ: the next in line takes its place at once
    assert rq_list(redis, VALIDATE_QUEUE) == [f"{third}-0"]

    validator = workers("--validate-only")
    assert eventually(lambda: read_job(redis, third, "a")["status"] == "queued", timeout=300), validator.output()
    assert started_at(redis, second, "a", "validation") is None and started_at(redis, first, "a", "validation") is None
    assert read_job(redis, second, "a")["status"] == "cancelled"
    assert line not in job_queue(redis, env).admission.lines()  # nothing of A's left to admit for validation


def test_max_running_jobs_holds_a_tenants_jobs_while_another_runs_beside(
    redis, env, tiny_causal_lm: Path, tmp_path: Path, workers: Any
) -> None:
    limits = tmp_path / "tenants.toml"
    limits.write_text("[tenants.a]\nmax_running_jobs = 1\n")
    extra = {"FTJOBS_TENANTS_FILE": str(limits)}
    queue = job_queue(redis, {**env, **extra})
    file_a, file_b = upload_rows(env, ROWS, "a"), upload_rows(env, ROWS, "b")
    a = [create_job(redis, request(tiny_causal_lm, file_a), "a") for _ in range(3)]
    b = create_job(redis, request(tiny_causal_lm, file_b), "b")
    for job_id in a:
        queue.enqueue_attempt("a", job_id, 1)
    queue.enqueue_attempt("b", b, 1)
    assert rq_list(redis, QUEUE) == [f"{a[0]}-1", f"{b}-1"]  # A's second is held: A has its one slot

    started = time.time()
    first = workers("--train-only", extra=extra)
    workers("--train-only", extra=extra)
    for job_id, tenant in [*((j, "a") for j in a), (b, "b")]:
        assert eventually(lambda j=job_id, t=tenant: ran(redis, j, t) is not None, timeout=600), first.output()[-3000:]
    runs = {j: ran(redis, j, "a") for j in a}
    b_run = ran(redis, b, "b")
    took = time.time() - started
    spans = sorted(r for r in runs.values() if r is not None)
    shown = [(round(s - started, 1), round(e - started, 1)) for s, e in spans]
    b_shown = (round(b_run[0] - started, 1), round(b_run[1] - started, 1)) if b_run else None
    print(f"\nmax_running_jobs=1 for A, 2 workers: A ran {shown}, B ran {b_shown} (s); all done in {took:.0f} s")
    for (_, end), (start, _) in zip(spans, spans[1:], strict=False):
        assert start > end, spans  # never two of A's at once: the next is admitted only once one has ended
    assert b_run is not None and b_run[0] < spans[0][1] and spans[0][0] < b_run[1]  # B ran beside A's first
