"""The operator's view of a deployment: its queues' backlog and its workers (what `/v1/admin/*` answers).

Read-only over RQ's own keys (queues, workers, job hashes), fair admission's lines (core/admission.py), ftjobs'
heartbeats and status index (core/keys.py). One thing is written here: a worker's hardware, which the worker
records once at startup (jobs/hardware.py `record_hardware`, under `hardware_key`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from redis import Redis
from rq import Queue, Worker
from rq.job import Job as RQJob
from rq.serializers import JSONSerializer

from ftjobs.client.models import QueuePayload
from ftjobs.client.models.admin import (
    QueueInfo,
    QueueOverview,
    TenantBacklog,
    TenantJobCounts,
    WorkerHardware,
    WorkerInfo,
    WorkerOverview,
)
from ftjobs.core.admission import Admission
from ftjobs.core.keys import HEARTBEATS_KEY, PREFIX, parse_heartbeat_member, status_index_prefix
from ftjobs.core.queue import NodePayload
from ftjobs.core.settings import Settings

log = logging.getLogger("ftjobs.fleet")
HARDWARE_TTL_S = 30 * 24 * 3600  # refreshed by each start; outlives a worker that died without cleaning up

def hardware_key(worker_name: str) -> str:
    return f"{PREFIX}:worker-hardware:{worker_name}"


# --------------------------------------------------------------------------- reading


def _age(when: datetime | None, now: float) -> float | None:
    return None if when is None else round(max(0.0, now - when.timestamp()), 3)


def _created(connection: Redis, rq_ids: Iterable[str]) -> list[datetime]:
    """When each RQ job was created (ids without a hash are skipped)."""
    found = []
    for rq_id in rq_ids:
        try:
            job = RQJob.fetch(rq_id, connection=connection, serializer=JSONSerializer)
        except Exception:
            continue
        when = job.enqueued_at or job.created_at
        if when is not None:
            found.append(when)
    return found


def _origin(connection: Redis, rq_id: str) -> str | None:
    raw = connection.hget(f"rq:job:{rq_id}", "origin")
    return raw.decode() if isinstance(raw, bytes) else raw  # type: ignore[return-value]


def running_attempts(connection: Redis) -> list[tuple[str, str, int]]:
    """(tenant, job id, attempt) of every attempt holding a lease (ftjobs' heartbeats)."""
    members: list[Any] = connection.zrange(HEARTBEATS_KEY, 0, -1)  # type: ignore[assignment]
    out = []
    for member in members:
        try:
            out.append(parse_heartbeat_member(member.decode() if isinstance(member, bytes) else member))
        except ValueError:
            continue
    return out


def job_counts(connection: Redis) -> list[TenantJobCounts]:
    """Every tenant's jobs per status, from the status index (one sorted set per tenant and status)."""
    counts: dict[str, dict[str, int]] = {}
    for raw in connection.scan_iter(match=f"{PREFIX}:t:*:by-status:*", count=500):
        key = raw.decode() if isinstance(raw, bytes) else raw
        tenant = key.removeprefix(f"{PREFIX}:t:").split(":by-status:")[0]
        status = key.removeprefix(status_index_prefix(tenant))
        n = int(connection.zcard(key))  # type: ignore[arg-type]
        if n:
            counts.setdefault(tenant, {})[status] = n
    return [TenantJobCounts(tenant=t, counts=dict(sorted(c.items()))) for t, c in sorted(counts.items())]


def queue_overview(connection: Redis, settings: Settings) -> QueueOverview:
    """Each queue's depth, pending backlog per tenant, oldest waiting age, running attempts and workers."""
    now = time.time()
    admission = Admission(connection, lambda tenant: None)
    workers = Worker.all(connection=connection, serializer=JSONSerializer)
    names = {settings.queue, settings.validate_queue} | {q.name for q in Queue.all(connection=connection)}
    names |= {n for w in workers for n in w.queue_names()}
    lines = admission.lines()
    names |= {line.queue for line in lines}
    running: dict[str, int] = {}
    for _tenant, job_id, attempt in running_attempts(connection):
        origin = _origin(connection, f"{job_id}-{attempt}")
        if origin:
            running[origin] = running.get(origin, 0) + 1
    queues = []
    for name in sorted(names):
        queue = Queue(name, connection=connection, serializer=JSONSerializer)
        backlog: dict[str, TenantBacklog] = {}
        heads: list[str] = list(queue.get_job_ids(0, 0))
        for line in (ln for ln in lines if ln.queue == name):
            pending = admission.pending(line)
            entry = backlog.setdefault(line.tenant, TenantBacklog(tenant=line.tenant, pending=0, admitted=0))
            entry.pending += len(pending)
            entry.admitted += len(admission.waiting(line))
            heads += pending[:1]
        ages = [a for a in (_age(w, now) for w in _created(connection, heads)) if a is not None]
        queues.append(
            QueueInfo(
                name=name,
                depth=queue.count,
                pending=sum(b.pending for b in backlog.values()),
                oldest_age_s=max(ages) if ages else None,
                running=running.get(name, 0),
                workers=sum(1 for w in workers if name in w.queue_names()),
                tenants=sorted(backlog.values(), key=lambda b: b.tenant),
            )
        )
    return QueueOverview(queues=queues, jobs=job_counts(connection))


def worker_overview(connection: Redis) -> WorkerOverview:
    """Every RQ worker: its queues, state, current job (ftjobs id, attempt, tenant), heartbeat age, hardware."""
    now = time.time()
    out = []
    for worker in sorted(Worker.all(connection=connection, serializer=JSONSerializer), key=lambda w: w.name):
        rq_id = worker.get_current_job_id()
        payload = _current_payload(connection, rq_id) if rq_id else None
        raw = connection.get(hardware_key(worker.name))
        hardware = None
        if raw:
            try:
                hardware = WorkerHardware.model_validate_json(raw)  # type: ignore[arg-type]
            except ValueError:
                hardware = None
        out.append(
            WorkerInfo(
                name=worker.name,
                hostname=worker.hostname,
                pid=worker.pid,
                queues=worker.queue_names(),
                state=str(getattr(worker.get_state(), "value", worker.get_state())),
                current_job=payload.job_id if payload else None,
                current_attempt=payload.attempt if payload else None,
                current_tenant=payload.tenant if payload else None,
                current_rq_job=rq_id,
                last_heartbeat_age_s=_age(worker.last_heartbeat, now),
                hardware=hardware,
            )
        )
    return WorkerOverview(workers=out)


def _current_payload(connection: Redis, rq_id: str) -> QueuePayload | NodePayload | None:
    """The attempt an RQ job runs: a job's own, or the one a member node (a multi-node job's) takes part in."""
    try:
        job = RQJob.fetch(rq_id, connection=connection, serializer=JSONSerializer)
        raw = (job.kwargs or {}).get("payload")
    except Exception:
        return None
    for model in (QueuePayload, NodePayload):
        try:
            return model.model_validate(raw)
        except ValueError:
            continue
    return None
