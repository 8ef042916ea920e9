"""One job on several machines (nodes): the gang of a multi-node attempt, as its horse sees it (docs/scaling.md).

    the horse that took the job (node 0): Gang.open -> rendezvous endpoint HOST:PORT published in Redis
        torchrun --nnodes M --nproc_per_node N --rdzv-backend c10d --rdzv-endpoint HOST:PORT --rdzv-id <job>-<attempt>
        (it hosts the c10d store); then members 1 .. M-1 go to the front of the job's training queue
    member k (jobs/node.py, on another worker): checks in (`node-<k>` = joined), starts the same torchrun
    -> every rank reports to Redis (core/keys.ranks_key); the horse finishes the job with rank 0's outcome

The horse waits FTJOBS_NODE_JOIN_TIMEOUT_S for every member to check in; then it closes the gang (no member starts
after that) and the job fails with `resources_unavailable` (`resources.nodes`), its member jobs taken off the queue.
A member lost before it checked in ends the attempt at once (`Gang.check`): its worker gone (RQ job started, no
heartbeat for FTJOBS_STALE_AFTER_S, or taken off the queue and never started) -> back to the front of the queue, not
counted; its member job failed (its horse died or raised) -> counted, like a lost work horse.
HOST is FTJOBS_ADVERTISE_HOST, else the machine's hostname: other nodes must reach it, and the port, directly.
"""

from __future__ import annotations

import json
import socket
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from redis import Redis
from rq import Queue
from rq.exceptions import NoSuchJobError
from rq.job import Job as RQJob
from rq.job import JobStatus as RQJobStatus
from rq.serializers import JSONSerializer

from ftjobs.client.models import JobError, QueuePayload
from ftjobs.core.keys import RANKS_TTL_S, nodes_key
from ftjobs.core.queue import JobQueue, member_rq_id
from ftjobs.core.settings import Settings
from ftjobs.jobs.errors import JobFailed
from ftjobs.jobs.interrupts import Preempted

JOINED = "joined"  # a member's word once it checked in and starts torchrun
ENDED = (None, RQJobStatus.FINISHED, RQJobStatus.FAILED, RQJobStatus.STOPPED, RQJobStatus.CANCELED)  # member jobs
RENDEZVOUS_MARGIN_S = 60  # torchrun's own join timeout: the horse's, plus this, so the horse decides first

# KEYS[1] = nodes_key; ARGV[1] = `node-<k>`. A member checks in unless the horse closed the gang: 1 joined, 0 not.
CHECK_IN = """
if redis.call('HEXISTS', KEYS[1], 'closed') == 1 then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
"""
# KEYS[1] = nodes_key. The horse closes the gang (no later check-in) and gets its members' words at that moment.
CLOSE = """
redis.call('HSET', KEYS[1], 'closed', '1')
return redis.call('HGETALL', KEYS[1])
"""


class NodesUnavailable(JobFailed):
    """The job's member nodes did not all join in time, or one cannot run its ranks."""

    code = "resources_unavailable"


class NodeLost(Preempted):
    """A member node left or was lost: the attempt ends unfinished; recovered not counted (a worker stopped or
    vanished), or `counted` (its member job failed: maybe for good, so it must not loop forever)."""

    def __init__(self, message: str, *, counted: bool = False) -> None:
        super().__init__(message)
        self.counted = counted


def member_field(node: int) -> str:
    return f"node-{node}"


def rendezvous_args(endpoint: str, nodes: int, run_id: str, *, host: bool, join_timeout_s: float) -> list[str]:
    """torchrun's multi-node arguments, the same on every node but `is_host` (node 0 hosts the c10d store)."""
    conf = f"is_host={int(host)},join_timeout={int(join_timeout_s) + RENDEZVOUS_MARGIN_S}"
    return ["--nnodes", str(nodes), "--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint, "--rdzv-id", run_id,
            "--rdzv-conf", conf]  # fmt: skip


def run_id(p: QueuePayload) -> str:
    """The rendezvous id: one per attempt, so a later attempt never meets an earlier one's agents."""
    return f"{p.job_id}-{p.attempt}"


def free_port() -> int:
    """A TCP port free on this machine right now (torchrun's agent binds it moments later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return int(s.getsockname()[1])


@dataclass
class Gang:
    """A multi-node attempt from its horse: the rendezvous it hosts, its members' check-ins, the join deadline."""

    redis: Redis
    p: QueuePayload
    nodes: int
    endpoint: str
    join_timeout_s: float
    stale_after_s: float  # a started member job with no RQ heartbeat for this long: its worker is gone
    deadline: float = 0.0  # monotonic: when the members must have joined
    joined: bool = False
    enqueued_at: float = 0.0  # wall clock (time.time()), as RQ's heartbeats are

    @classmethod
    def open(cls, redis: Redis, p: QueuePayload, settings: Settings, nodes: int) -> Gang:
        """Pick and publish the rendezvous endpoint (this machine's advertised host, a free port)."""
        endpoint = f"{settings.advertise_host or socket.gethostname()}:{free_port()}"
        key = nodes_key(p.tenant, p.job_id, p.attempt)
        pipe = redis.pipeline(transaction=True)
        pipe.delete(key)
        pipe.hset(key, mapping={"endpoint": endpoint, "nodes": str(nodes)})
        pipe.expire(key, RANKS_TTL_S)
        pipe.execute()
        return cls(redis, p, nodes, endpoint, settings.node_join_timeout_s, settings.stale_after_s)

    def launch_args(self) -> list[str]:
        return rendezvous_args(self.endpoint, self.nodes, run_id(self.p), host=True, join_timeout_s=self.join_timeout_s)

    def enqueue_members(self, settings: Settings, queue: str) -> list[str]:
        """Members 1 .. nodes-1 on the job's training queue; the join deadline starts now."""
        self.deadline, self.enqueued_at = time.monotonic() + self.join_timeout_s, time.time()
        return JobQueue(self.redis, settings).enqueue_members(self.p.tenant, self.p.job_id, self.p.attempt,
                                                              self.nodes, queue)  # fmt: skip

    def check(self) -> None:
        """While the attempt trains: raise when a member failed, left or was lost, or the join deadline passed."""
        key = nodes_key(self.p.tenant, self.p.job_id, self.p.attempt)
        words = self._words(self.redis.hgetall(key))
        _raise_for(words)
        if not self.joined and len(words) == self.nodes - 1 and all(w == JOINED for w in words.values()):
            self.joined = True
        for node in [] if self.joined else [k for k in range(1, self.nodes) if k not in words]:
            lost, counted = self._lost(node)
            if lost:
                _raise_for(self._words(self.redis.hgetall(key)))  # its word may have come meanwhile: it speaks first
                if self.redis.hget(key, member_field(node)) is None:
                    raise NodeLost(f"node {node} lost before it joined: {lost}", counted=counted)
        if not self.joined and time.monotonic() > self.deadline:
            words = self._words(self.redis.eval(CLOSE, 1, nodes_key(self.p.tenant, self.p.job_id, self.p.attempt)))
            _raise_for(words)
            missing = [k for k in range(1, self.nodes) if words.get(k) != JOINED]
            if missing:
                raise NodesUnavailable(
                    f"{len(missing)} of the {self.nodes - 1} member nodes did not join within "
                    f"{self.join_timeout_s:g} s (FTJOBS_NODE_JOIN_TIMEOUT_S): the job's training queue has fewer "
                    f"than {self.nodes} free workers. Ask for fewer nodes, or add workers.",
                    param="resources.nodes",
                )
            self.joined = True

    def close(self, settings: Settings) -> None:
        """The attempt is over on this node: no member may start any more; the waiting ones leave the queue."""
        self.redis.eval(CLOSE, 1, nodes_key(self.p.tenant, self.p.job_id, self.p.attempt))
        JobQueue(self.redis, settings).remove_members(self.p.job_id, self.p.attempt, self.nodes)

    def members_ended(self) -> bool:
        """Every member job has ended, its ranks with it: a rank's word missing now will never come."""
        return all(self._status(node) in ENDED for node in range(1, self.nodes))

    def _status(self, node: int) -> RQJobStatus | None:
        """Member `node`'s RQ job status (None: no such job any more)."""
        try:
            job = RQJob.fetch(member_rq_id(self.p.job_id, self.p.attempt, node), connection=self.redis,
                              serializer=JSONSerializer)  # fmt: skip
        except NoSuchJobError:
            return None
        return job.get_status(refresh=False)

    def _lost(self, node: int) -> tuple[str, bool]:
        """Why member `node` (not checked in) will never check in ("" = it may still), and whether that counts."""
        rq_id = member_rq_id(self.p.job_id, self.p.attempt, node)
        try:
            job = RQJob.fetch(rq_id, connection=self.redis, serializer=JSONSerializer)
        except NoSuchJobError:
            return "its member job is gone", False
        status, worker = job.get_status(refresh=False), job.worker_name or "?"
        if status in ENDED:
            said = status.value if status else "vanished"
            return f"its member job {said} on worker {worker}", status == RQJobStatus.FAILED
        if status == RQJobStatus.STARTED:
            age = time.time() - _epoch(job.last_heartbeat or job.started_at, self.enqueued_at)
            return (f"worker {worker} lost (no heartbeat for {age:.0f} s)" if age > self.stale_after_s else ""), False
        on_queue = self.redis.lpos(Queue(job.origin, connection=self.redis).key, rq_id) is not None
        if status == RQJobStatus.QUEUED and not on_queue and time.time() - self.enqueued_at > self.stale_after_s:
            return "a worker took its member job off the queue and never started it", False  # lost as it dequeued
        return "", False

    @staticmethod
    def _words(raw: Any) -> dict[int, str]:
        """Members' words by node index, from HGETALL's dict or CLOSE's flat list."""
        pairs = raw.items() if isinstance(raw, dict) else zip(raw[::2], raw[1::2], strict=True)
        words = {}
        for field, value in pairs:
            name = field.decode() if isinstance(field, bytes) else str(field)
            if name.startswith("node-"):
                words[int(name[5:])] = value.decode() if isinstance(value, bytes) else str(value)
        return words


def _epoch(when: datetime | None, default: float) -> float:
    """An RQ timestamp (UTC; naive in older RQ) as seconds since the epoch."""
    if when is None:
        return default
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


def _raise_for(words: dict[int, str]) -> None:
    """A member that could not run its ranks fails the job with its error; one that left ends the attempt."""
    for node, word in sorted(words.items()):
        if word == JOINED:
            continue
        said = json.loads(word)
        if said.get("error"):
            error = JobError.model_validate(said["error"])
            raise NodesUnavailable(f"node {node}: {error.message}", param=error.param or "resources.nodes")
        raise NodeLost(f"node {node} left: {said.get('left') or 'no reason given'}")


# ----------------------------------------------------------------------------- a member's words (jobs/node.py)


def check_in(redis: Redis, p: QueuePayload, node: int) -> str | None:
    """A member joins the gang: the rendezvous endpoint, or None when the horse closed it (too late)."""
    key = nodes_key(p.tenant, p.job_id, p.attempt)
    endpoint = redis.hget(key, "endpoint")
    if endpoint is None or not redis.eval(CHECK_IN, 1, key, member_field(node), JOINED):
        return None
    return endpoint.decode() if isinstance(endpoint, bytes) else str(endpoint)


def say(redis: Redis, p: QueuePayload, node: int, word: dict[str, Any]) -> None:
    """A member's last word for the horse: {"error": JobError} (it cannot run its ranks) or {"left": reason}."""
    key = nodes_key(p.tenant, p.job_id, p.attempt)
    redis.hset(key, member_field(node), json.dumps(word))
