"""The one place that writes job progress to Redis (service/store.py is the one place that reads it).

Values and stream entries are encoded by `core/records.py`, into the layout of `core/keys.py`.

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
from pathlib import Path
from typing import Any, Literal

from redis import Redis

from ftjobs.client.models import Artifact, EventLevel, EventType, JobError, JobStatus, MetricPoint, Progress
from ftjobs.core.base_models import PACKAGED, packaged_model
from ftjobs.core.keys import (
    ACTIVE_JOBS_KEY,
    GUARDED_WRITE,
    HEARTBEATS_KEY,
    JobField,
    active_member,
    guarded_write_keys,
    heartbeat_member,
    job_key,
    metrics_key,
)
from ftjobs.core.records import (
    decode_entry,
    decode_hash,
    event_entry,
    guarded_write_args,
    metric_entry,
    status_entry,
)
from ftjobs.core.settings import Settings
from ftjobs.core.telemetry import Telemetry

log = logging.getLogger("ftjobs.report")


class ServerPaths:
    """What a tenant must never read in its job's record or events: the server's own paths. Each is rewritten
    as the tenant may see it: a model under a model root relative to it (core/base_models.shown_model), a
    packaged model by its name, the data folder, scratch and home folders as placeholders. A safety net over
    the messages of libraries (an OSError naming a file); our own messages use the short forms already."""

    def __init__(self, pairs: Iterable[tuple[str, str]] = ()) -> None:
        # longest first: a model folder inside a root is rewritten before the root
        self.pairs = sorted(set(pairs), key=lambda p: -len(p[0]))

    @classmethod
    def for_settings(cls, settings: Settings, scratch: Iterable[Path] = ()) -> ServerPaths:
        """Everything `of` hides, from a deployment's settings."""
        data = [settings.data_dir]
        if settings.storage_url.startswith("file://"):
            data.append(Path(settings.storage_url.removeprefix("file://")))
        return cls.of(settings.model_roots, data, scratch)

    @classmethod
    def of(cls, model_roots: Iterable[Path], data: Iterable[Path] = (), scratch: Iterable[Path] = ()) -> ServerPaths:
        """The deployment's model roots, its data folders (data dir, a local store) and a job's scratch."""
        pairs: list[tuple[str, str]] = []

        def both(path: Path, shown: str, inside: str) -> None:
            for form in {str(path), str(path.resolve())} - {"/", "."}:  # "/" as a home or root would hide every path
                pairs.extend([(form + "/", inside), (form, shown)])

        for name in PACKAGED:
            if (folder := packaged_model(name)) is not None:
                both(folder, name, name + "/")
        for root in model_roots:
            both(Path(root), "<models>", "")
        for folder in data:
            both(Path(folder), "<data>", "<data>/")
        for folder in scratch:
            both(Path(folder), "<work>", "<work>/")
        both(Path.home(), "~", "~/")  # a home folder names its OS user
        return cls(pairs)

    def hide(self, text: str) -> str:
        for path, shown in self.pairs:
            if path in text:
                text = text.replace(path, shown)
        return text


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

    def __init__(
        self, redis: Redis, tenant: str, job_id: str, attempt: int, hidden: ServerPaths | None = None
    ) -> None:
        self.redis = redis
        self.hidden = hidden or ServerPaths()  # rewritten in every value and entry this reporter writes
        self.tenant = tenant
        self.job_id = job_id
        self.attempt = attempt
        self.phase = JobStatus.validating_files if attempt == 0 else JobStatus.running
        self.key = job_key(tenant, job_id)
        self.member = heartbeat_member(tenant, job_id, attempt)
        self._write_script = redis.register_script(GUARDED_WRITE)
        self._last_metrics: dict[str, float] = {}
        self.telemetry = Telemetry(redis)  # deployment-wide figures for /metrics (core/telemetry.py)

    # ------------------------------------------------------------------ reads

    def read(self) -> dict[str, Any] | None:
        """The job record, decoded; None when there is no such job."""
        raw = self.redis.hgetall(self.key)
        return decode_hash(raw) if raw else None

    def cancel_requested(self) -> bool:
        """True when the job should stop: a cancel was requested, or this attempt no longer owns it."""
        cancel, status, attempt = self.redis.hmget(
            self.key, [JobField.cancel_requested, JobField.status, JobField.attempt]
        )
        return self._should_stop(cancel, status, attempt)

    def pause_requested(self) -> bool:
        """Whether the API asked this running job to pause (jobs/training/checkpoints.py polls it at step ends)."""
        return bool(json.loads(self.redis.hget(self.key, JobField.pause_requested) or "false"))

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
                status_entry(JobStatus.cancelled, "cancelled before it started", attempt=self.attempt),
                statuses=[JobStatus.queued],
            )
            return False
        # The queue lets the reconciler requeue a lost attempt onto the same hardware class.
        resolved = self.with_resolved({"queue": queue} if queue else {}, record.get(JobField.resolved) or {})
        fields: dict[str, Any] = {
            JobField.status: JobStatus.running,
            JobField.started_at: int(now),
            JobField.worker: worker_name,
            JobField.heartbeat_at: now,
            JobField.progress: Progress(),
            JobField.last_metrics: {},
            JobField.resolved: resolved,
        }
        # The worker's name stays in the record (for the reconciler and operators), out of the tenant's events:
        # an operator's names may carry host names.
        event = status_entry(JobStatus.running, f"running (attempt {self.attempt})", attempt=self.attempt)
        if not self._write(fields, event, statuses=[JobStatus.queued]):
            return False
        self.redis.zadd(HEARTBEATS_KEY, {self.member: now})
        self.telemetry.started(self.tenant, record, now)
        return True

    def begin_validation(self, worker_name: str) -> bool:
        """Attempt 0 takes the `validating_files` job: worker + heartbeat (the reconciler watches it too)."""
        now = time.time()
        event = event_entry("validating files")
        if not self._write({JobField.worker: worker_name, JobField.heartbeat_at: now}, event):
            return False
        self.redis.zadd(HEARTBEATS_KEY, {self.member: now})
        return True

    def validated(self, message: str, data: Mapping[str, Any]) -> bool:
        """validating_files -> queued as attempt 1, once the files passed the worker's checks."""
        fields: dict[str, Any] = {JobField.status: JobStatus.queued, JobField.attempt: 1}
        event = status_entry(JobStatus.queued, message, **{"attempt": 1, **data})
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
        data: dict[str, Any] = {"attempt": self.attempt}
        if error is not None:
            data["error"] = error.model_dump()
        level = EventLevel.error if status == JobStatus.failed else EventLevel.info
        event = status_entry(status, message, level, **data)
        ok = self._write(fields, event, statuses=statuses)
        self.redis.zrem(HEARTBEATS_KEY, self.member)
        if ok:
            self.redis.srem(ACTIVE_JOBS_KEY, active_member(self.tenant, self.job_id))
            self.telemetry.finished(self.tenant, self.job_id, status)
        return ok

    def requeue(self, reason: str, free: bool = False) -> bool:
        """queued or running -> queued as the next attempt, for an attempt that stopped without finishing
        (jobs/reconcile.py). `free`: a preemption, not counted against max_attempts (`resolved.free_attempts`)."""
        fields: dict[str, Any] = {JobField.status: JobStatus.queued, JobField.attempt: self.attempt + 1}
        data: dict[str, Any] = {"attempt": self.attempt + 1, "previous_attempt": self.attempt}
        if free:
            current = self.with_resolved({})
            free_attempts = int(current.get("free_attempts") or 0) + 1
            fields[JobField.resolved] = self.with_resolved({"free_attempts": free_attempts}, current)
            data["counted"] = False
        note = " (not counted against the attempt limit)" if free else ""
        event = status_entry(
            JobStatus.queued, f"{reason}; requeued as attempt {self.attempt + 1}{note}", EventLevel.warning, **data
        )
        ok = self._write(fields, event, statuses=[JobStatus.queued, JobStatus.running])
        self.redis.zrem(HEARTBEATS_KEY, self.member)
        return ok

    def pause(self, message: str, statuses: Iterable[JobStatus] = (JobStatus.running,), **data: Any) -> bool:
        """running -> paused at this attempt (a pause asked for): no lease, no RQ job until it is resumed."""
        event = status_entry(JobStatus.paused, message, **{"attempt": self.attempt, **data})
        ok = self._write({JobField.status: JobStatus.paused, JobField.pause_requested: False}, event, statuses=statuses)
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
        return self._write({}, event_entry(message, type, level, data))

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
        self.telemetry.step(self.tenant, self.job_id, progress, pipe)
        pipe.hmget(self.key, [JobField.cancel_requested, JobField.status, JobField.attempt])
        results = pipe.execute()  # the guarded write's, the telemetry's, then the hmget
        written, fetched = results[0][0], results[-1]
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
            metric_entry(point),
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
            point = decode_entry(fields)
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
        return self._write({JobField.resolved: self.with_resolved(values)})

    def with_resolved(self, values: Mapping[str, Any], current: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The record's `resolved` (`current`, else read now) with `values` added: every worker write of it is
        built here. The API resolved the hyperparameters at create time; the worker only adds what it alone
        knows (its queue, steps, row counts, attempts) and never resolves them again."""
        if current is None:
            raw = self.redis.hget(self.key, JobField.resolved)
            current = json.loads(raw) if raw else {}
        return {**current, **values}

    # ------------------------------------------------------------------ the one write

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
        args = guarded_write_args(self.attempt, statuses, fields, entry)
        result = self._write_script(
            keys=guarded_write_keys(self.tenant, self.job_id, stream),
            args=[self.hidden.hide(a) if isinstance(a, str) else a for a in args],
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
