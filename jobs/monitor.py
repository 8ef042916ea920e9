"""`ftjobs.jobs.monitor.run`: a monitor's scheduled run, the RQ job that RQ's scheduler enqueues when it is due;
and `ScheduledRuns`, the worker's thread that drives RQ's scheduler.

A run schedules the monitor's next run first (so one failure does not end the schedule), then starts this one: an
evaluation job on the newest file of the dataset (core/monitors.py), unless the tenant is at its max_active_jobs
(as the tenants file says now): then the run is recorded `skipped`. It only writes records and enqueues: seconds.

RQ's scheduler (`rq.scheduler.RQScheduler`) holds a per-queue lock in Redis, so one scheduler across all workers
moves due jobs from the queue's ScheduledJobRegistry into the queue. RQ would run it in a process forked from the
worker (`with_scheduler`), which looks like a work horse to everything that counts a worker's horses; a thread of
the worker calls the same two steps instead (take or refresh the lock, enqueue what is due), every second.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from redis import Redis
from rq.scheduler import RQScheduler
from rq.serializers import JSONSerializer

from ftjobs.client.models.common import TENANT_PATTERN
from ftjobs.client.models.monitors import MONITOR_ID_PATTERN
from ftjobs.core import monitors
from ftjobs.core.queue import connect
from ftjobs.core.settings import Settings

log = logging.getLogger("ftjobs.monitor")


class MonitorPayload(BaseModel):
    """What crosses the queue (as JSON) for one scheduled run; re-validated here and by the worker."""

    model_config = ConfigDict(extra="forbid")
    tenant: str = Field(pattern=TENANT_PATTERN)
    monitor_id: str = Field(pattern=MONITOR_ID_PATTERN)
    due: float = Field(description="Unix seconds the run was scheduled for.")


def run(payload: dict[str, Any]) -> dict[str, Any]:
    """RQ job function: one scheduled run of one monitor; returns a small summary."""
    p = MonitorPayload.model_validate(payload)
    settings = Settings.from_env()
    redis = connect(settings.redis_url)
    try:
        record = monitors.load(redis, p.tenant, p.monitor_id)
        if record is None or not monitors.is_due(record, p.due):  # deleted, or its schedule was replaced
            return {"monitor_id": p.monitor_id, "status": "skipped"}
        monitors.schedule_next(redis, settings, record, after=max(p.due, record["monitor"]["next_run_at"] or 0))
        max_active = monitors.max_active_jobs(settings, p.tenant)
        started = monitors.start_run(redis, settings, record, trigger="schedule", max_active=max_active)
        log.info("monitor %s: run %s %s%s", p.monitor_id, started.id, started.status,
                 f" ({started.warning})" if started.warning else "")  # fmt: skip
        return {"monitor_id": p.monitor_id, "run_id": started.id, "status": started.status}
    finally:
        redis.close()


class ScheduledRuns(threading.Thread):
    """RQ's scheduler for one queue, driven from a thread of the worker (see the module docstring)."""

    def __init__(self, connection: Redis, queue: str, interval_s: int = 1) -> None:  # whole seconds: its lock TTL
        super().__init__(name="rq-scheduler", daemon=True)
        self.scheduler = RQScheduler(
            [queue], connection=connection, interval=interval_s, serializer=JSONSerializer, logging_level="WARNING"
        )
        self._stopping = threading.Event()

    def run(self) -> None:
        while not self._stopping.wait(self.scheduler.interval):
            try:
                if self.scheduler.acquire_locks():  # taken, or refreshed while ours (a TTL of interval + 60 s)
                    self.scheduler.enqueue_scheduled_jobs()
            except Exception:  # Redis unreachable: try again at the next tick
                log.warning("the scheduler could not enqueue due jobs", exc_info=True)

    def stop(self) -> None:
        self._stopping.set()
        self.join(10)
        try:
            self.scheduler.release_locks()  # another worker's scheduler takes the queue over at once
        except Exception:
            log.warning("could not release the scheduler lock", exc_info=True)
