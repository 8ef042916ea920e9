"""The one module that talks to RQ: the Redis connection, job functions by dotted path, RQ job ids, enqueue, cancel.

The API enqueues a job's file validation (attempt 0, `ftjobs.jobs.validate.run`) on the validation queue; the
validation enqueues training attempt 1 (`ftjobs.jobs.train.run`) on the job's training queue; the worker's
recovery enqueues the attempts after a crash or a preemption. Payloads cross as JSON (QueuePayload), never
pickle, and the queue carries names, never code: the API never imports `jobs`.

Every enqueue goes through the fair admission of `core/admission.py`: the RQ job is saved, and in the same
transaction joins its tenant's line, which puts it on RQ's list only when the tenant has no other job waiting
there (and is under its `max_running_jobs` for training). Until then the job is "pending" (`state()`).
"""

from __future__ import annotations

import json
import logging
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field
from redis import Redis
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry
from rq import Queue
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job as RQJob
from rq.job import JobStatus as RQJobStatus
from rq.serializers import JSONSerializer
from rq.utils import now as rq_now

from ftjobs.client.models import JOB_ID_PATTERN, TENANT_PATTERN, QueuePayload
from ftjobs.core.admission import Admission, Line
from ftjobs.core.keys import JobField, job_key
from ftjobs.core.logs import current_request_id
from ftjobs.core.settings import Settings
from ftjobs.core.tenants import TenantsSource

log = logging.getLogger("ftjobs.queue")

TRAIN_FUNC = "ftjobs.jobs.train.run"  # one training attempt (1, 2 ...), imported by the worker's horse only
VALIDATE_FUNC = "ftjobs.jobs.validate.run"  # the job's validating_files phase (attempt 0)
MEMBER_FUNC = "ftjobs.jobs.node.join"  # a member node of a multi-node attempt (jobs/node.py)
VALIDATE_TIMEOUT_S = 3600
RESULT_TTL_S = 24 * 3600  # the ftjobs record, not RQ's, is the lasting one
FAILURE_TTL_S = 7 * 24 * 3600
WAITING = {RQJobStatus.QUEUED, RQJobStatus.DEFERRED, RQJobStatus.SCHEDULED}  # a worker will still pick it up


def rq_job_id(job_id: str, attempt: int, run: int = 1) -> str:
    """The RQ id of an attempt, `<job_id>-<attempt>`; a validation (attempt 0) enqueued again after its first run
    is `<job_id>-0-<run>`."""
    return f"{job_id}-{attempt}" if attempt or run <= 1 else f"{job_id}-0-{run}"


def member_rq_id(job_id: str, attempt: int, node: int) -> str:
    """The RQ id of member node `node` (1 .. nodes-1) of an attempt: `<job_id>-<attempt>-node<node>`."""
    return f"{job_id}-{attempt}-node{node}"


class NodePayload(BaseModel):
    """What crosses the queue for one member node of a multi-node attempt (never a QueuePayload: no lease)."""

    model_config = ConfigDict(extra="forbid")
    job_id: str = Field(pattern=JOB_ID_PATTERN)
    tenant: str = Field(pattern=TENANT_PATTERN)
    attempt: int = Field(ge=1)
    node: int = Field(ge=1, le=15, description="This member's index; the node that took the job is 0.")
    nodes: int = Field(ge=2, le=16)


class JobQueue:
    """The queues of one deployment (its `settings`) on one Redis connection; `tenants`: where each tenant's
    `max_running_jobs` is read (default: the deployment's tenants file, read when first needed)."""

    def __init__(self, connection: Redis, settings: Settings, tenants: TenantsSource | None = None) -> None:
        self.connection = connection
        self.settings = settings
        self._tenants = tenants
        self.admission = Admission(connection, self.max_running_jobs)

    def queue(self, name: str) -> Queue:
        return Queue(name, connection=self.connection, serializer=JSONSerializer)

    def max_running_jobs(self, tenant: str) -> int | None:
        """The tenant's limit on training attempts admitted or running at once (None: no limit)."""
        if self._tenants is None:
            self._tenants = TenantsSource(self.settings.tenants_file, self.settings.api_keys)
        return self._tenants.current().limits(tenant).max_running_jobs

    def enqueue_validation(
        self, tenant: str, job_id: str, *, queue: str | None = None, run: int = 1, at_front: bool = False
    ) -> str:
        """The job's file validation (attempt 0) on the validation queue; it hands the job on to the training
        queue `queue` (default `settings.queue`). `run`: 2, 3 ... when a lost validation runs again."""
        payload = QueuePayload(job_id=job_id, tenant=tenant, attempt=0, queue=queue or self.settings.queue)
        again = f", run {run}" if run > 1 else ""
        return self._enqueue(
            VALIDATE_FUNC,
            payload,
            self.settings.validate_queue,
            rq_job_id(job_id, 0, run),
            timeout=VALIDATE_TIMEOUT_S,
            description=f"validate files of {job_id} (tenant {tenant}{again})",
            at_front=at_front,
        )

    def enqueue_attempt(
        self, tenant: str, job_id: str, attempt: int, *, queue: str | None = None, at_front: bool = False
    ) -> str:
        """Training attempt `attempt` (1, 2 ...) on `queue` (default `settings.queue`); `at_front`: a preempted
        or recovered job goes first in its tenant's line and to the front of RQ's queue."""
        payload = QueuePayload(job_id=job_id, tenant=tenant, attempt=attempt)
        return self._enqueue(
            TRAIN_FUNC,
            payload,
            queue or self.settings.queue,
            rq_job_id(job_id, attempt),
            timeout=self.settings.job_timeout_s,
            description=f"train {job_id} (tenant {tenant}, attempt {attempt})",
            at_front=at_front,
        )

    def enqueue_members(self, tenant: str, job_id: str, attempt: int, nodes: int, queue: str) -> list[str]:
        """Member nodes 1 .. nodes-1 of a running multi-node attempt, at the front of its training queue. They
        bypass the tenant's admission line: they are part of an attempt that was admitted already."""
        rq_queue, ids = self.queue(queue), []
        for node in range(1, nodes):
            payload = NodePayload(job_id=job_id, tenant=tenant, attempt=attempt, node=node, nodes=nodes)
            job = rq_queue.create_job(
                MEMBER_FUNC,
                kwargs={"payload": payload.model_dump()},
                job_id=member_rq_id(job_id, attempt, node),
                timeout=self.settings.job_timeout_s,
                result_ttl=RESULT_TTL_S,
                failure_ttl=FAILURE_TTL_S,
                description=f"node {node} of {nodes} for {job_id} (tenant {tenant}, attempt {attempt})",
            )
            ids.append(rq_queue.enqueue_job(job, at_front=True).id)
        return ids

    def remove_members(self, job_id: str, attempt: int, nodes: int) -> int:
        """Take the attempt's member jobs that no worker took yet off their queue; returns how many. A started
        member stops by itself when it sees the attempt is over (jobs/node.py)."""
        removed = 0
        for node in range(1, nodes):
            try:
                job = RQJob.fetch(member_rq_id(job_id, attempt, node), connection=self.connection,
                                  serializer=JSONSerializer)  # fmt: skip
                if job.get_status() in WAITING:
                    job.cancel()
                    job.delete()
                    removed += 1
            except (NoSuchJobError, InvalidJobOperation) as exc:
                log.info("member %d of %s attempt %d not removed: %s", node, job_id, attempt, exc)
        return removed

    def _enqueue(
        self, func: str, payload: QueuePayload, name: str, rq_id: str, *, timeout: int, description: str,
        at_front: bool,
    ) -> str:
        """Save the RQ job and hand it to its tenant's line, in one transaction (admitted into RQ if it fits)."""
        rq_queue = self.queue(name)
        job = rq_queue.create_job(
            func,
            kwargs={"payload": payload.model_dump(exclude_none=True)},
            job_id=rq_id,
            timeout=timeout,
            result_ttl=RESULT_TTL_S,
            failure_ttl=FAILURE_TTL_S,
            description=description,
            # The request that created the job (the API's, or the one a worker bound while handing the job on):
            # the worker's log lines about this job carry it (core/logs.bind_job).
            meta={"request_id": request_id} if (request_id := current_request_id()) else None,
        )
        job.enqueued_at = rq_now()
        line = Line(name, payload.tenant, training=payload.attempt > 0)
        priority = self.priority(payload.tenant, payload.job_id)
        pipe = self.connection.pipeline(transaction=True)
        pipe.sadd(Queue.redis_queues_keys, rq_queue.key)  # as RQ's enqueue does: `rq info` lists the queue
        job.save(pipeline=pipe)
        self.admission.enqueue(line, rq_id, priority, front=at_front, pipe=pipe)
        pipe.execute()
        return rq_id

    def priority(self, tenant: str, job_id: str) -> int:
        """The job's `priority` as requested (0 when absent: a record from before the field)."""
        raw = self.connection.hget(job_key(tenant, job_id), JobField.request)
        try:
            return int(json.loads(raw or "{}").get("priority") or 0)  # type: ignore[arg-type]
        except (ValueError, TypeError, AttributeError):
            return 0

    def line_of(self, job: RQJob) -> Line | None:
        """The admission line of an RQ job of ours (None for anything else)."""
        try:
            payload = QueuePayload.model_validate((job.kwargs or {}).get("payload"))
        except Exception:
            return None
        return Line(job.origin, payload.tenant, training=payload.attempt > 0)

    def cancel(self, job_id: str, attempt: int, run: int = 1) -> None:
        """Cancel the attempt's RQ job if it has not started (a running one stops via cancel_requested); `run`:
        which validation run, for attempt 0. Also how a paused job leaves its line and RQ (service/pausing.py)."""
        rq_id = rq_job_id(job_id, attempt, run)
        try:
            job = RQJob.fetch(rq_id, connection=self.connection, serializer=JSONSerializer)
            if job.get_status() in WAITING:
                if (line := self.line_of(job)) is not None:  # out of its line (pending or RQ); the next one moves up
                    self.admission.release(line, rq_id)
                job.cancel()
        except (NoSuchJobError, InvalidJobOperation) as exc:
            log.info("rq job %s not cancelled: %s", rq_id, exc)

    def state(self, rq_id: str) -> str:
        """"waiting" (a worker will still take it), "pending" (in its tenant's line, not yet in RQ: it will be
        admitted), "missing", or RQ's status (started, failed, finished ...)."""
        try:
            job = RQJob.fetch(rq_id, connection=self.connection, serializer=JSONSerializer)
        except NoSuchJobError:
            return "missing"
        status = job.get_status(refresh=False)
        if status is None:
            return "missing"
        if status == RQJobStatus.QUEUED:  # only if it is really on its queue's list (it may have been lost with Redis)
            if self.connection.lpos(self.queue(job.origin).key, rq_id) is not None:
                return "waiting"
            line = self.line_of(job)
            if line is not None and self.admission.is_pending(line.queue, line.tenant, rq_id):
                return "pending"
            return "queued but not on its queue"
        # `.value`: str() of RQ's (str, Enum) status is "JobStatus.QUEUED", which no comparison would match.
        return "waiting" if status in WAITING else str(status.value)


def connect(url: str, *, ride_out_outages: bool = True) -> Redis:
    """A Redis client. The worker's rides out a short outage (a restart, a failover) instead of failing the job:
    commands are retried on connection errors with backoff for about a minute. The API's (`ride_out_outages=
    False`) fails fast instead, so an unreachable Redis is a quick 503, not a hung request."""
    if not ride_out_outages:
        return Redis.from_url(url, socket_connect_timeout=2, socket_timeout=10)
    retry = Retry(ExponentialBackoff(cap=5.0, base=0.2), retries=15)
    return Redis.from_url(
        url, retry=retry, retry_on_error=[RedisConnectionError, RedisTimeoutError], socket_connect_timeout=5
    )


def redact_url(url: str) -> str:
    """The URL without its password, for log lines."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username or ''}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))
