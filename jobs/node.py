"""A member node of a multi-node job: the RQ job function `join` a worker's horse runs (docs/scaling.md).

The job's own horse (node 0, jobs/training/distributed.py) enqueued it at the front of the job's training queue with
the attempt it belongs to. Here: check the job still runs that attempt, check in (jobs/training/nodes.py), start
the same torchrun as node 0 with the same rendezvous arguments, and supervise it. The group stops when the record is
cancelled, paused, finished or moved to another attempt, and when this worker stops (the node leaves: its word tells
the horse, which ends the attempt for the worker's recovery). This horse holds no lease and touches no admission
line: the attempt is node 0's; a crash here ends the rendezvous, and node 0's ranks report it.
"""

from __future__ import annotations

import logging
import subprocess
import time
from typing import Any

from redis import Redis
from rq import get_current_job

from ftjobs.client.models import JobCreate, JobStatus, QueuePayload
from ftjobs.core.keys import JobField
from ftjobs.core.queue import NodePayload, connect
from ftjobs.core.settings import Settings
from ftjobs.jobs.errors import JobFailed
from ftjobs.jobs.interrupts import INTERRUPTER, Preempted
from ftjobs.jobs.report import Reporter
from ftjobs.jobs.training import distributed, nodes

log = logging.getLogger("ftjobs.node")


def join(payload: dict[str, Any]) -> dict[str, Any]:
    """RQ job function: take part in one attempt of a multi-node job as member `node`; returns a small summary."""
    m = NodePayload.model_validate(payload)
    settings = Settings.from_env()
    redis = connect(settings.redis_url)
    try:
        return {"job_id": m.job_id, "attempt": m.attempt, "node": m.node, "status": _member(m, settings, redis)}
    finally:
        INTERRUPTER.disarm()
        redis.close()


def _member(m: NodePayload, settings: Settings, redis: Redis) -> str:
    p = QueuePayload(job_id=m.job_id, tenant=m.tenant, attempt=m.attempt)
    try:
        return _take_part(m, p, settings, redis)
    except Preempted:  # this worker is stopping before the ranks started: the horse hands the attempt back now
        INTERRUPTER.acknowledge()
        nodes.say(redis, p, m.node, {"left": "its worker is stopping"})
        return "left"


def _take_part(m: NodePayload, p: QueuePayload, settings: Settings, redis: Redis) -> str:
    """Check in and run this node's ranks until the attempt ends; a stop while they run is said here first."""
    reporter = Reporter(redis, m.tenant, m.job_id, m.attempt)
    record = reporter.read()
    if not _current(record, m.attempt):
        return "skipped"  # the attempt ended (or moved on) before this member was taken
    assert record is not None
    resources = JobCreate.model_validate(record["request"]).resources
    try:
        gpus = distributed.gpus_per_process(resources)
    except JobFailed as e:  # this node cannot run its share: the horse fails the job with why
        nodes.say(redis, p, m.node, {"error": e.to_error().model_dump()})
        return "refused"
    endpoint = nodes.check_in(redis, p, m.node)
    if endpoint is None:
        return "too late"  # the horse stopped waiting for members
    rendezvous = nodes.rendezvous_args(endpoint, m.nodes, nodes.run_id(p), host=False,
                                       join_timeout_s=settings.node_join_timeout_s)  # fmt: skip
    command, env, threads, _ = distributed.launch(p, resources, gpus, rendezvous)
    rq_job = get_current_job()
    worker = rq_job.worker_name if rq_job else None
    reporter.event(
        f"node {m.node} of {m.nodes} joined: {resources.processes} processes on worker {worker}",
        data={"node": m.node, "nodes": m.nodes, "worker": worker, "rendezvous": endpoint,
              "threads_per_process": threads},
    )  # fmt: skip
    group = subprocess.Popen(command, env=env, start_new_session=True, preexec_fn=distributed.die_with_parent)
    try:
        while group.poll() is None:
            time.sleep(distributed.POLL_S)
            if not _current(reporter.read(), m.attempt):
                log.info("%s attempt %d is over or stopping: node %d stops its ranks", m.job_id, m.attempt, m.node)
                break
    except Preempted:  # this worker is stopping: tell the horse first, its ranks' errors are the echo of this
        INTERRUPTER.acknowledge()
        nodes.say(redis, p, m.node, {"left": f"worker {worker} is stopping"})
        return "left"
    finally:
        distributed.stop_group(group)
    return f"ranks exited with {group.returncode}"


def _current(record: dict[str, Any] | None, attempt: int) -> bool:
    """The record still runs this attempt and nobody asked it to stop."""
    return bool(
        record
        and record.get(JobField.attempt) == attempt
        and record.get(JobField.status) == JobStatus.running
        and not record.get(JobField.cancel_requested)
        and not record.get(JobField.pause_requested)
    )
