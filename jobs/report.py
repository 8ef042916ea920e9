"""The one place that writes job progress to Redis (service/store.py is the one place that reads it).

Every write is a GUARDED_WRITE: it lands only while this attempt is the job's current attempt and the job
is in the status the transition expects. A stale attempt (requeued by the reconciler, or a job cancelled
while queued) therefore cannot overwrite the record of the attempt that replaced it.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal

from redis import Redis

from ftjobs.client.models import (
    Artifact,
    Event,
    EventLevel,
    EventType,
    JobError,
    JobStatus,
    MetricPoint,
    Progress,
)
from ftjobs.core.keys import (
    ACTIVE_JOBS_KEY,
    GUARDED_WRITE,
    HEARTBEATS_KEY,
    STREAM_FIELD,
    JobField,
    active_member,
    events_key,
    heartbeat_member,
    job_key,
    metrics_key,
)

log = logging.getLogger("ftjobs.report")


def _json(value: Any) -> str:
    if hasattr(value, "model_dump"):
        value = value.model_dump(mode="json")
    elif isinstance(value, list):
        value = [v.model_dump(mode="json") if hasattr(v, "model_dump") else v for v in value]
    return json.dumps(value, default=_plain)


def _plain(value: Any) -> Any:
    """numpy/torch scalars (`.item()`) and anything else JSON lacks, as plain values."""
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def finite(values: Mapping[str, Any]) -> dict[str, float]:
    """Only the finite numbers: JSON has no NaN/inf, and the wire models want floats."""
    return {
        k: float(v)
        for k, v in values.items()
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
    }


class Reporter:
    """Writes one attempt's status, progress, heartbeats, events and metrics (JSON, all guarded).

    Attempt 0 is the file validation a worker runs while the job is `validating_files` (jobs/validate.py);
    attempts 1, 2 ... are training runs while it is `running`. Writes land only in that phase's status.
    """

    def __init__(self, redis: Redis, tenant: str, job_id: str, attempt: int) -> None:
        self.redis = redis
        self.tenant = tenant
        self.job_id = job_id
        self.attempt = attempt
        self.phase = JobStatus.validating_files if attempt == 0 else JobStatus.running
        self.key = job_key(tenant, job_id)
        self.member = heartbeat_member(tenant, job_id, attempt)
        self._write_script = redis.register_script(GUARDED_WRITE)
        self._last_metrics: dict[str, float] = {}

    # ------------------------------------------------------------------ reads

    def read(self) -> dict[str, Any] | None:
        """The job record, decoded; None when there is no such job."""
        raw = self.redis.hgetall(self.key)
        if not raw:
            return None
        return {_text(k): json.loads(v) for k, v in raw.items()}

    def cancel_requested(self) -> bool:
        """True when the job should stop: a cancel was requested, or this attempt no longer owns it."""
        cancel, status, attempt = self.redis.hmget(
            self.key, [JobField.cancel_requested, JobField.status, JobField.attempt]
        )
        return self._should_stop(cancel, status, attempt)

    def _should_stop(self, cancel: Any, status: Any, attempt: Any) -> bool:
        if status is None:
            return True  # the record is gone
        return (
            bool(cancel and json.loads(cancel))
            or json.loads(status) != self.phase
            or json.loads(attempt or "0") != self.attempt
        )

    # ------------------------------------------------------------------ transitions

    def start(self, worker_name: str, queue: str | None = None) -> bool:
        """queued -> running; False when the job is not ours to run (cancelled, or a newer attempt exists)."""
        now = time.time()
        record = self.read() or {}
        if record.get(JobField.cancel_requested):
            # Cancelled while queued: end it here rather than leave it queued with no RQ job behind it.
            self._write(
                {JobField.status: JobStatus.cancelled, JobField.finished_at: int(now)},
                self._event_json(
                    "cancelled before it started",
                    EventLevel.info,
                    EventType.status,
                    {"status": JobStatus.cancelled, "attempt": self.attempt},
                ),
                statuses=[JobStatus.queued],
            )
            return False
        resolved = dict(record.get(JobField.resolved) or {})
        if queue:
            resolved["queue"] = queue  # lets the reconciler requeue a lost attempt onto the same hardware class
        fields: dict[str, Any] = {
            JobField.status: JobStatus.running,
            JobField.started_at: int(now),
            JobField.worker: worker_name,
            JobField.heartbeat_at: now,
            JobField.progress: Progress(),
            JobField.last_metrics: {},
            JobField.resolved: resolved,
        }
        event = self._event_json(
            f"running (attempt {self.attempt}) on {worker_name}",
            EventLevel.info,
            EventType.status,
            {"status": JobStatus.running, "attempt": self.attempt, "worker": worker_name},
        )
        if not self._write(fields, event, statuses=[JobStatus.queued]):
            return False
        self.redis.zadd(HEARTBEATS_KEY, {self.member: now})
        return True

    def begin_validation(self, worker_name: str) -> bool:
        """Attempt 0 takes the `validating_files` job: worker + heartbeat (the reconciler watches it too)."""
        now = time.time()
        event = self._event_json(f"validating files on {worker_name}", EventLevel.info, EventType.message, {})
        if not self._write({JobField.worker: worker_name, JobField.heartbeat_at: now}, event):
            return False
        self.redis.zadd(HEARTBEATS_KEY, {self.member: now})
        return True

    def validated(self, message: str, data: Mapping[str, Any]) -> bool:
        """validating_files -> queued as attempt 1, once the files passed the worker's checks."""
        fields: dict[str, Any] = {JobField.status: JobStatus.queued, JobField.attempt: 1}
        data = {"status": JobStatus.queued, "attempt": 1, **data}
        event = self._event_json(message, EventLevel.info, EventType.status, data)
        ok = self._write(fields, event)
        self.redis.zrem(HEARTBEATS_KEY, self.member)
        return ok

    def finish(
        self,
        status: JobStatus,
        error: JobError | None = None,
        results: Mapping[str, Any] | None = None,
        artifacts: Iterable[Artifact] | None = None,
        statuses: Iterable[JobStatus] | None = None,
    ) -> bool:
        """running (or validating_files, attempt 0) -> succeeded | failed | cancelled: finished_at, a status
        event, no more heartbeat."""
        if not status.is_terminal:
            raise ValueError(f"finish() needs a terminal status, got {status}")
        fields: dict[str, Any] = {JobField.status: status, JobField.finished_at: int(time.time())}
        if error is not None:
            fields[JobField.error] = error
        if results is not None:
            fields[JobField.results] = dict(results)
        if artifacts is not None:
            fields[JobField.artifacts] = list(artifacts)
        message = f"{status}" + (f": {error.code}: {error.message}" if error else "")
        data: dict[str, Any] = {"status": status, "attempt": self.attempt}
        if error is not None:
            data["error"] = error.model_dump()
        level = EventLevel.error if status == JobStatus.failed else EventLevel.info
        event = self._event_json(message, level, EventType.status, data)
        ok = self._write(fields, event, statuses=statuses)
        self.redis.zrem(HEARTBEATS_KEY, self.member)
        if ok:
            self.redis.srem(ACTIVE_JOBS_KEY, active_member(self.tenant, self.job_id))
        return ok

    def requeue(self, reason: str, free: bool = False) -> bool:
        """queued or running -> queued as the next attempt, for an attempt that stopped without finishing
        (jobs/reconcile.py). `free`: a preemption, not counted against max_attempts (`resolved.free_attempts`)."""
        fields: dict[str, Any] = {JobField.status: JobStatus.queued, JobField.attempt: self.attempt + 1}
        data: dict[str, Any] = {"status": JobStatus.queued, "attempt": self.attempt + 1}
        data["previous_attempt"] = self.attempt
        if free:
            resolved = dict((self.read() or {}).get(JobField.resolved) or {})
            resolved["free_attempts"] = int(resolved.get("free_attempts") or 0) + 1
            fields[JobField.resolved] = resolved
            data["counted"] = False
        note = " (not counted against the attempt limit)" if free else ""
        event = self._event_json(
            f"{reason}; requeued as attempt {self.attempt + 1}{note}", EventLevel.warning, EventType.status, data
        )
        ok = self._write(fields, event, statuses=[JobStatus.queued, JobStatus.running])
        self.redis.zrem(HEARTBEATS_KEY, self.member)
        return ok

    # ------------------------------------------------------------------ while running

    def event(
        self,
        message: str,
        level: EventLevel = EventLevel.info,
        type: EventType = EventType.message,
        data: Mapping[str, Any] | None = None,
    ) -> bool:
        return self._write({}, self._event_json(message, level, type, dict(data or {})))

    def heartbeat(self) -> bool:
        """HSET heartbeat_at + ZADD the attempt's heartbeat (the reconciler's evidence that we are alive)."""
        now = time.time()
        ok = self._write({JobField.heartbeat_at: now})
        if ok:
            self.redis.zadd(HEARTBEATS_KEY, {self.member: now})
        return ok

    def progress(self, progress: Progress) -> bool:
        """Progress and a heartbeat in one write."""
        now = time.time()
        ok = self._write({JobField.progress: progress, JobField.heartbeat_at: now})
        if ok:
            self.redis.zadd(HEARTBEATS_KEY, {self.member: now})
        return ok

    def step(self, progress: Progress, heartbeat: bool) -> bool:
        """Per training step, one round trip: write progress (+ the heartbeat when due) and read whether
        to stop; True when a cancel was requested or this attempt no longer owns the job."""
        now = time.time()
        fields: dict[str, Any] = {JobField.progress: progress}
        if heartbeat:
            fields[JobField.heartbeat_at] = now
        pipe = self.redis.pipeline(transaction=False)
        self._write(fields, client=pipe)
        pipe.hmget(self.key, [JobField.cancel_requested, JobField.status, JobField.attempt])
        (written, _status), fetched = pipe.execute()
        if written and heartbeat:
            self.redis.zadd(HEARTBEATS_KEY, {self.member: now})
        return self._should_stop(*fetched)

    def metric(
        self, split: Literal["train", "eval"], step: int, epoch: float | None, values: Mapping[str, Any]
    ) -> bool:
        """A point on the metrics stream; `last_metrics` keeps each value's newest (`eval_loss` ...)."""
        clean = finite(values)
        if not clean:
            return False
        point = MetricPoint(id="", step=step, epoch=epoch, split=split, created_at=time.time(), values=clean)
        self._last_metrics.update({f"{split}_{k}": v for k, v in clean.items()})
        return self._write(
            {JobField.last_metrics: self._last_metrics},
            point.model_dump_json(exclude={"id"}),
            stream=metrics_key(self.tenant, self.job_id),
        )

    def drop_metrics_after(self, step: int) -> int:
        """Delete the metric points past `step` (what a lost attempt logged after the checkpoint a new attempt
        resumes from) and rebuild `last_metrics` from the points kept; returns how many were deleted."""
        if self.cancel_requested():
            return 0  # not ours to edit any more
        key = metrics_key(self.tenant, self.job_id)
        dropped, last = [], {}
        for entry_id, fields in self.redis.xrange(key):
            point = json.loads(fields.get(STREAM_FIELD.encode()) or fields[STREAM_FIELD])
            if point["step"] > step:
                dropped.append(entry_id)
            else:
                last.update({f"{point['split']}_{k}": v for k, v in point["values"].items()})
        if dropped:
            self.redis.xdel(key, *dropped)
        self._last_metrics = last
        self._write({JobField.last_metrics: last})
        return len(dropped)

    def resolved(self, values: Mapping[str, Any]) -> bool:
        """Merge derived values (steps, row counts, model path ...) into the record's `resolved`."""
        raw = self.redis.hget(self.key, JobField.resolved)
        merged = {**(json.loads(raw) if raw else {}), **values}
        return self._write({JobField.resolved: merged})

    # ------------------------------------------------------------------ the one write

    def _event_json(self, message: str, level: EventLevel, type: EventType, data: dict[str, Any]) -> str:
        event = Event(id="", created_at=time.time(), level=level, type=type, message=message, data=data)
        return event.model_dump_json(exclude={"id"})

    def _write(
        self,
        fields: Mapping[str, Any],
        entry: str = "",
        stream: str | None = None,
        statuses: Iterable[JobStatus] | None = None,
        client: Any = None,
    ) -> bool:
        """GUARDED_WRITE at this attempt (in this attempt's phase unless `statuses` says otherwise); with a
        pipeline as `client` it is queued there (returns False)."""
        statuses = (self.phase,) if statuses is None else statuses
        pairs = [x for f, v in fields.items() for x in (str(f), _json(v))]
        result = self._write_script(
            keys=[self.key, stream or events_key(self.tenant, self.job_id)],
            args=[str(self.attempt), ",".join(statuses), len(fields), *pairs, entry],
            client=client,
        )
        return client is None and bool(result[0])


class Heartbeat:
    """Heartbeats from a daemon thread while the job runs, so long silent phases (loading a model,
    evaluating, uploading) do not look like a lost worker; the training callback adds progress.

    It also looks for a cancel (or the loss of the job to a newer attempt) every `poll_s` and then calls
    `on_stop` once: the job's main thread may be deep in a step that takes minutes (jobs/interrupts.py)."""

    def __init__(
        self,
        reporter: Reporter,
        interval_s: float,
        on_stop: Callable[[], None] | None = None,
        poll_s: float = 1.0,
    ) -> None:
        self.reporter = reporter
        self.interval_s = interval_s
        self.poll_s = min(poll_s, interval_s)
        self.on_stop = on_stop
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="ftjobs-heartbeat", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _beat(self) -> None:
        last = time.monotonic()
        while not self._stop.wait(self.poll_s):
            try:
                owned = True
                if time.monotonic() - last >= self.interval_s:
                    last = time.monotonic()
                    owned = self.reporter.heartbeat()
                if not owned or self.reporter.cancel_requested():
                    if self.on_stop is not None:
                        self.on_stop()
                    return  # cancelled or no longer ours: nothing left to keep alive
            except Exception:  # a Redis blip: the next beat retries
                log.warning("heartbeat failed", exc_info=True)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
