"""One job on two nodes: two real worker processes on one training queue stand for two machines (loopback).

The worker that takes a `nodes: 2` job hosts the c10d rendezvous and enqueues a member job; the other worker runs
it, and the two torchrun agents train one DDP group (gloo). Its train losses match the 1-process job at the same
global batch (the request shape and tolerance of test_distributed.py); a cancel stops the ranks on both nodes; a
job whose member never joins (one worker only) fails with `resources_unavailable` within the join timeout; a member
lost before it checks in hands the attempt back at once (not counted); a member's rank killed after training started
requeues the job as a counted attempt, with nothing of the first attempt left on either node.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from rq import Worker
from rq.exceptions import NoSuchJobError
from rq.job import Job as RQJob
from rq.serializers import JSONSerializer

from ftjobs.client.models import JobCreate
from ftjobs.client.models.resources import Resources
from ftjobs.core.fleet import worker_overview
from ftjobs.core.keys import nodes_key, ranks_key
from ftjobs.core.queue import member_rq_id
from tests.conftest import WorkerProcess
from tests.jobs.helpers import events, guarded_write, read_job, submit, wait_for
from tests.jobs.test_distributed import ROWS, TOLERANCE, processes_of, request, train_losses

pytestmark = pytest.mark.timeout(600)
JOIN_TIMEOUT_S = 240  # generous: a member's worker may still be preloading torch on a loaded machine
ENDED = ["running", "succeeded", "failed", "cancelled", "paused"]  # wait_for these: a wrong outcome fails at once


def nodes_request(model: Path, env: dict[str, str], batch_size: int, **hp: int) -> JobCreate:
    job = request(model, env, processes=1, batch_size=batch_size, **hp)
    return job.model_copy(update={"resources": Resources(processes=1, nodes=2)})


def start_workers(
    env: dict[str, str], tmp_path: Path, count: int, join_timeout_s: float, first: int = 0
) -> list[WorkerProcess]:
    node_env = {**env, "FTJOBS_ADVERTISE_HOST": "127.0.0.1", "FTJOBS_NODE_JOIN_TIMEOUT_S": str(join_timeout_s)}
    return [WorkerProcess(node_env, tmp_path / f"worker-{i}.log") for i in range(first, first + count)]


@pytest.fixture
def two_nodes(env: dict[str, str], tmp_path: Path) -> Iterator[list[WorkerProcess]]:
    workers = start_workers(env, tmp_path, 2, JOIN_TIMEOUT_S)
    yield workers
    for w in workers:
        w.stop()


def running_and(check):  # type: ignore[no-untyped-def]
    """wait_for's `until`: the check holds, or the job left `running` (then the caller's assert says how)."""
    return lambda r: r["status"] != "running" or check(r)


def member_rq_status(redis, rq_id: str) -> str | None:  # type: ignore[no-untyped-def]
    try:
        return str(RQJob.fetch(rq_id, connection=redis, serializer=JSONSerializer).get_status(refresh=False).value)
    except (NoSuchJobError, AttributeError):  # not enqueued yet
        return None


def member_rank(job_id: str) -> int:
    """The pid of the job's rank on the member node: a child of the torchrun started with `is_host=0`."""
    for pid in processes_of(job_id):
        try:
            parent = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1]
            if (
                b"LOCAL_RANK=0" in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
                and b"is_host=0" in Path(f"/proc/{parent}/cmdline").read_bytes()
            ):
                return pid
        except OSError:
            continue
    raise AssertionError(f"no member rank of {job_id}")


def no_process_left(job_id: str, timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while processes_of(job_id) and time.monotonic() < deadline:
        time.sleep(0.2)
    return processes_of(job_id) == []


def test_two_nodes_train_as_one_and_stop_together(
    redis, env, tmp_path: Path, two_nodes: list[WorkerProcess], tiny_causal_lm: Path
) -> None:
    a, b = two_nodes
    double = submit(redis, env, nodes_request(tiny_causal_lm, env, batch_size=4))
    two = wait_for(redis, double, timeout=420, worker=a)
    assert two["status"] == "succeeded", (two.get("error"), a.output()[-3000:], b.output()[-3000:])
    single = submit(redis, env, request(tiny_causal_lm, env, processes=1, batch_size=8))
    one = wait_for(redis, single, timeout=300, worker=a)
    assert one["status"] == "succeeded", one.get("error")

    # Both workers took part: the job's horse on one, the member job (node 1) on the other.
    launched = [e for e in events(redis, double) if (e.get("data") or {}).get("nodes") == 2]
    joined = [e for e in events(redis, double) if (e.get("data") or {}).get("node") == 1]
    print(
        f"member joined {joined[0]['created_at'] - launched[0]['created_at']:.1f} s after launch; train seconds: "
        f"2 nodes {two['results']['train_seconds']}, 1 process {one['results']['train_seconds']}; job wall s: "
        f"{two['finished_at'] - two['started_at']} and {one['finished_at'] - one['started_at']}"
    )
    launched, joined = [e["data"] for e in launched], [e["data"] for e in joined]
    assert launched and launched[0]["backend"] == "gloo" and launched[0]["rendezvous"].startswith("127.0.0.1:")
    assert len(joined) == 1 and joined[0]["worker"] and joined[0]["worker"] != two["worker"], (joined, two["worker"])
    member_job = RQJob.fetch(member_rq_id(double, 1, 1), connection=redis, serializer=JSONSerializer)
    assert member_job.get_status() == "finished" and member_job.worker_name == joined[0]["worker"]
    assert len(redis.hgetall(ranks_key("default", double, 1))) == 2  # both ranks reported through Redis
    assert two["progress"]["total_steps"] == one["progress"]["total_steps"] == two["results"]["steps"]
    first, second = train_losses(redis, single), train_losses(redis, double)
    assert [s for s, _ in first] == [s for s, _ in second] and len(first) >= 4
    differences = [abs(x - y) for (_, x), (_, y) in zip(first, second, strict=True)]
    print("loss differences per step (2 nodes x 1 vs 1 x 8):", [f"{d:.2e}" for d in differences])
    assert max(differences) <= TOLERANCE, (first, second)

    # A member's worker that stops (a deploy, a spot preemption) ends the attempt: the job goes back to the front of
    # its queue, not counted; a new worker is its member for attempt 2. A cancel then stops the ranks on both nodes.
    job_id = submit(redis, env, nodes_request(tiny_causal_lm, env, batch_size=2, max_steps=5000))
    trained = lambda r: r["progress"].get("step", 0) >= 2  # noqa: E731
    running = wait_for(redis, job_id, ["running"], timeout=300, worker=a, until=trained)
    assert len(processes_of(job_id)) >= 4  # a torchrun agent and its rank on each node
    member_worker = next(e["data"]["worker"] for e in events(redis, job_id) if (e.get("data") or {}).get("node"))
    pids = {w.name: w.pid for w in Worker.all(connection=redis)}
    (member,) = [w for w in two_nodes if w.proc.pid == pids[member_worker]]
    horse = a if member is b else b
    member.stop()
    again = lambda r: r["attempt"] == 2 and r["progress"].get("step", 0) >= 2  # noqa: E731
    two_nodes.extend(start_workers(env, tmp_path, 1, JOIN_TIMEOUT_S, first=2))
    record = wait_for(redis, job_id, ["running"], timeout=300, worker=horse, until=again)
    assert record["resolved"].get("free_attempts") == 1 and running["attempt"] == 1, record["resolved"]
    assert any("node 1 left" in e["message"] for e in events(redis, job_id)), events(redis, job_id)[-5:]
    busy = {w.current_rq_job for w in worker_overview(redis).workers if w.current_job == job_id}
    assert busy == {f"{job_id}-2", member_rq_id(job_id, 2, 1)}  # GET /v1/admin/workers: both busy with the job
    assert guarded_write(redis, job_id, {"cancel_requested": True}, statuses=["running"])
    record = wait_for(redis, job_id, timeout=120, worker=horse)
    assert record["status"] == "cancelled" and record["progress"]["step"] < 5000
    assert no_process_left(job_id), processes_of(job_id)


def test_a_member_that_never_joins_fails_the_job(redis, env, tmp_path: Path, tiny_causal_lm: Path) -> None:
    """One worker on the queue: the member job waits for a second one that never comes; after the join timeout
    the job fails naming resources.nodes, its member job is off the queue and nothing of it runs."""
    (alone,) = start_workers(env, tmp_path, 1, join_timeout_s=5)
    try:
        job_id = submit(redis, env, nodes_request(tiny_causal_lm, env, batch_size=4))
        running = wait_for(redis, job_id, ["running", "failed"], timeout=300, worker=alone)
        started = time.monotonic()
        record = wait_for(redis, job_id, ["failed", "succeeded", "cancelled"], timeout=120, worker=alone)
        assert record["status"] == "failed", record
        assert record["error"]["code"] == "resources_unavailable" and record["error"]["param"] == "resources.nodes"
        assert running["status"] == "failed" or time.monotonic() - started < 60
        assert redis.exists(f"rq:job:{member_rq_id(job_id, 1, 1)}") == 0  # taken off the queue
        assert no_process_left(job_id), processes_of(job_id)
    finally:
        alone.stop()


def test_what_nodes_rule_out_is_refused(http, redis, tiny_causal_lm: Path) -> None:
    body = "".join(json.dumps(r) + "\n" for r in ROWS).encode()
    file_id = http.post("/v1/files", files={"file": ("rows.jsonl", body, "application/jsonl")}).json()["id"]
    job = {"model": str(tiny_causal_lm), "training_file": file_id}
    for resources in [{"nodes": 0}, {"nodes": 17}, {"nodes": 2, "processes": 2, "sharding": "fsdp"}]:
        refused = http.post("/v1/jobs", json={**job, "method": {"type": "full"}, "resources": resources})
        assert refused.status_code == 422 and refused.json()["error"]["param"] == "resources.nodes", refused.text
    created = http.post("/v1/jobs", json={**job, "resources": {"nodes": 2, "processes": 2}})
    assert created.status_code == 201, created.text
    assert read_job(redis, created.json()["id"])["request"]["resources"]["nodes"] == 2


def test_a_member_lost_before_it_joins_hands_the_attempt_back(redis, env, tmp_path: Path, tiny_causal_lm: Path) -> None:
    """The member's worker is killed (SIGKILL) after it took the member job, before it checked in: node 0 sees the
    member job started with no heartbeat, and the job goes back to its queue (not counted) long before the join
    timeout; a fresh worker is the member of attempt 2, which trains."""
    quick = {**env, "FTJOBS_STALE_AFTER_S": "8"}  # seconds without an RQ heartbeat (1 s apart) before "lost"
    workers = start_workers(quick, tmp_path, 1, JOIN_TIMEOUT_S)
    try:
        job_id = submit(redis, env, nodes_request(tiny_causal_lm, env, batch_size=2, max_steps=5000))
        record = wait_for(redis, job_id, ENDED, timeout=300, worker=workers[0])
        assert record["status"] == "running", record
        # No preload: its horse imports torch after taking the member job, seconds before it could check in.
        workers += start_workers({**quick, "FTJOBS_PRELOAD": "0"}, tmp_path, 1, JOIN_TIMEOUT_S, first=1)
        rq_id, deadline = member_rq_id(job_id, 1, 1), time.monotonic() + 240
        while member_rq_status(redis, rq_id) != "started":
            assert time.monotonic() < deadline and workers[1].proc.poll() is None, workers[1].output()[-3000:]
            time.sleep(0.02)
        workers[1].proc.kill()  # SIGKILL: its horse dies with it (PR_SET_PDEATHSIG), no word to anyone
        killed = time.time()
        assert not redis.hexists(nodes_key("default", job_id, 1), "node-1")  # it never checked in
        workers += start_workers(quick, tmp_path, 1, JOIN_TIMEOUT_S, first=2)
        again = running_and(lambda r: r["attempt"] == 2 and r["progress"].get("step", 0) >= 1)
        record = wait_for(redis, job_id, ENDED, timeout=300, worker=workers[0], until=again)
        assert record["status"] == "running" and record["resolved"].get("free_attempts") == 1, record
        (lost,) = [e for e in events(redis, job_id) if "lost before it joined" in e["message"]]
        print(f"member lost {lost['created_at'] - killed:.1f} s after its worker was killed: {lost['message']}")
        assert lost["created_at"] - killed < JOIN_TIMEOUT_S / 2
        assert guarded_write(redis, job_id, {"cancel_requested": True}, statuses=["running"])
        record = wait_for(redis, job_id, timeout=120, worker=workers[0])
        assert record["status"] == "cancelled", record
        assert no_process_left(job_id), processes_of(job_id)
    finally:
        for w in workers:
            w.stop()


def test_a_killed_member_rank_requeues_the_job_counted(
    redis, env, tmp_path: Path, two_nodes: list[WorkerProcess], tiny_causal_lm: Path
) -> None:
    """The member's rank is SIGKILLed while the job trains (the OOM killer, a lost GPU): the attempt ends, the job
    goes back to its queue as a counted attempt, and nothing of attempt 1 is left on either node."""
    a, b = two_nodes
    job_id = submit(redis, env, nodes_request(tiny_causal_lm, env, batch_size=2, max_steps=5000))
    trained = running_and(lambda r: r["progress"].get("step", 0) >= 2)
    record = wait_for(redis, job_id, ENDED, timeout=300, worker=a, until=trained)
    assert record["status"] == "running", record
    os.kill(member_rank(job_id), signal.SIGKILL)
    killed = time.time()
    record = wait_for(redis, job_id, ENDED, timeout=300, worker=a, until=running_and(lambda r: r["attempt"] == 2))
    assert record["status"] == "running" and not record["resolved"].get("free_attempts"), record  # counted
    (lost,) = [e for e in events(redis, job_id) if "lost; the worker recovers" in e["message"]]
    print(f"attempt 1 ended {lost['created_at'] - killed:.1f} s after the member's rank was killed")
    first = [pid for pid in processes_of(job_id) if b'"attempt":1' in Path(f"/proc/{pid}/cmdline").read_bytes()]
    assert first == [], first  # torchrun and the rank of attempt 1, on both nodes, are gone
    assert guarded_write(redis, job_id, {"cancel_requested": True}, statuses=["running"])
    record = wait_for(redis, job_id, timeout=120, worker=a)
    assert record["status"] == "cancelled", record
    assert no_process_left(job_id), processes_of(job_id)
