"""Deployment-wide figures in Redis: what the workers (and the webhook dispatcher, and the API's uploads) count,
and what every API replica reads back when Prometheus scrapes it (service/metrics.py).

Workers are not scraped: they are forked horses that come and go, often behind no reachable address. So they write
their figures here, and each API replica's `/metrics` reads the same keys, so every replica reports the same
deployment-wide numbers:

- a counter: one hash per metric, `field = label string`, HINCRBYFLOAT;
- a histogram: one hash per metric, fields `<labels>|<le>` (observations per bucket, not cumulative), `<labels>|sum`
  and `<labels>|count`; the reader adds the buckets up into Prometheus' cumulative form;
- gauges of a running job (tokens/s, step time, GPU memory): one hash per job with a TTL, listed in a sorted set by
  last write, so a lost worker's gauges vanish on their own (`LIVE_TTL_S`).

Beside them, `snapshot()` reads what already lives in Redis at scrape time: jobs by status and tenant (ZCARD of the
status index), queue depth and oldest age (RQ's lists and the admission lines), workers alive and busy (RQ's
worker registry). Never a SCAN: every read is a known key. Pure redis: no prometheus, no torch import.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from redis import Redis
from redis.exceptions import RedisError

from ftjobs.client.models import JobStatus, Progress
from ftjobs.core.admission import LINES_KEY, Line, pending_key, rq_queue_key
from ftjobs.core.keys import ACTIVE_JOBS_KEY, HEARTBEATS_KEY, PREFIX, JobField, job_key, status_index_key

log = logging.getLogger("ftjobs.telemetry")
ROOT = f"{PREFIX}:telemetry"
TENANTS_KEY = f"{ROOT}:tenants"  # set: every tenant a worker has run a job of (the status index is per tenant)
LIVE_KEY = f"{ROOT}:live"  # sorted set: "<tenant>|<job>" -> when its gauges were last written
LIVE_TTL_S = 120  # a running job's gauges older than this are gone (its worker died or it finished)
OLDEST_SCAN = 200  # jobs looked at per queue list or admission line for the oldest one waiting

# Histogram buckets (upper bounds, seconds or tokens/s); +Inf is implied.
BUCKETS: dict[str, tuple[float, ...]] = {
    "time_to_start_seconds": (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 4 * 3600, 24 * 3600),
    "job_duration_seconds": (10, 30, 60, 120, 300, 600, 1800, 3600, 2 * 3600, 6 * 3600, 12 * 3600, 24 * 3600,
                             3 * 24 * 3600),
    "training_step_seconds": (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
}
COUNTERS = ("jobs_finished_total", "training_steps_total", "training_tokens_total", "upload_bytes_total",
            "uploads_total", "webhook_deliveries_total")
GAUGES = ("tokens_per_second", "step_seconds", "gpu_memory_bytes")


def counter_key(name: str) -> str:
    return f"{ROOT}:counter:{name}"


def histogram_key(name: str) -> str:
    return f"{ROOT}:hist:{name}"


def gauges_key(member: str) -> str:
    return f"{ROOT}:job:{member}"


def label_string(labels: Mapping[str, str]) -> str:
    """`a=x,b=y` (sorted): the hash field of one label set; values never hold `,` `=` or `|` (ids, statuses)."""
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


def parse_labels(text: str) -> dict[str, str]:
    return dict(item.split("=", 1) for item in text.split(",") if item)


def gpu_memory_bytes() -> int | None:
    """The horse's peak CUDA memory, when torch is already loaded and CUDA in use; None on a CPU (never imports
    torch: the worker parent must not load it)."""
    torch = sys.modules.get("torch")
    try:
        if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
            return int(torch.cuda.max_memory_allocated())
    except Exception:  # a broken CUDA setup must never fail a step
        return None
    return None


class Telemetry:
    """The writer: counters, histogram observations and a running job's gauges (`pipe`: queue them there)."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._last: tuple[float, int, int] | None = None  # (monotonic, step, tokens) of the previous step

    def incr(self, name: str, amount: float = 1, pipe: Any = None, **labels: str) -> None:
        (pipe or self.redis).hincrbyfloat(counter_key(name), label_string(labels), amount)

    def observe(self, name: str, value: float, pipe: Any = None, **labels: str) -> None:
        bound = next((b for b in BUCKETS[name] if value <= b), "+Inf")
        prefix = label_string(labels)
        client = pipe or self.redis.pipeline(transaction=False)
        client.hincrby(histogram_key(name), f"{prefix}|{bound}", 1)
        client.hincrbyfloat(histogram_key(name), f"{prefix}|sum", value)
        client.hincrby(histogram_key(name), f"{prefix}|count", 1)
        if pipe is None:
            client.execute()

    def started(self, tenant: str, record: Mapping[str, Any], now: float) -> None:
        """A job's first attempt began running: created -> running is its time to start."""
        self.redis.sadd(TENANTS_KEY, tenant)
        if record.get(JobField.started_at) is None and record.get(JobField.created_at) is not None:
            self.observe("time_to_start_seconds", max(0.0, now - float(record[JobField.created_at])))

    def finished(self, tenant: str, job_id: str, status: JobStatus) -> None:
        """A worker ended the job: counted by status; running -> end is its duration (when it ever ran)."""
        pipe = self.redis.pipeline(transaction=False)
        self.incr("jobs_finished_total", pipe=pipe, status=str(status))
        started = self.redis.hget(job_key(tenant, job_id), JobField.started_at)
        if started not in (None, b"null", "null"):
            self.observe("job_duration_seconds", max(0.0, time.time() - float(started)), pipe, status=str(status))
        member = f"{tenant}|{job_id}"
        pipe.delete(gauges_key(member))
        pipe.zrem(LIVE_KEY, member)
        pipe.execute()

    def step(self, tenant: str, job_id: str, progress: Progress, pipe: Any) -> None:
        """One training step ended: step time and tokens/s since the previous step (queued on `pipe`)."""
        now = time.monotonic()
        last, self._last = self._last, (now, progress.step, progress.tokens_seen)
        if last is None or progress.step <= last[1]:
            return  # the first step of this attempt (or a repeat): nothing to measure against
        steps, tokens, seconds = progress.step - last[1], max(0, progress.tokens_seen - last[2]), now - last[0]
        self.observe("training_step_seconds", seconds / steps, pipe)
        self.incr("training_steps_total", steps, pipe)
        self.incr("training_tokens_total", tokens, pipe)
        gauges: dict[str, float] = {"step_seconds": seconds / steps}
        if seconds > 0:
            gauges["tokens_per_second"] = tokens / seconds
        if (gpu := gpu_memory_bytes()) is not None:
            gauges["gpu_memory_bytes"] = gpu
        member = f"{tenant}|{job_id}"
        pipe.hset(gauges_key(member), mapping=gauges)
        pipe.expire(gauges_key(member), LIVE_TTL_S)
        pipe.zadd(LIVE_KEY, {member: time.time()})


def count(redis: Redis, name: str, amount: float = 1, **labels: str) -> None:
    """One counter step from a process with no Telemetry of its own (an upload, a webhook attempt); a Redis error
    is logged, never raised: a figure must not fail the work it counts."""
    try:
        Telemetry(redis).incr(name, amount, **labels)
    except RedisError as exc:
        log.warning("telemetry: %s not counted (%s)", name, exc)


def count_upload(redis: Redis, nbytes: int) -> None:
    count(redis, "uploads_total")
    count(redis, "upload_bytes_total", nbytes)


# --------------------------------------------------------------------------- the reader (API replicas, at scrape)


@dataclass
class Histogram:
    buckets: list[tuple[float, float]]  # (upper bound, cumulative count), +Inf last
    sum: float
    count: float


@dataclass
class Snapshot:
    """Everything deployment-wide that /metrics exports, read in a few pipelined round trips."""

    jobs: dict[tuple[str, str], int] = field(default_factory=dict)  # (tenant, status) -> jobs
    queue_jobs: dict[tuple[str, str], int] = field(default_factory=dict)  # (queue, state) -> jobs
    queue_oldest_s: dict[str, float] = field(default_factory=dict)  # queue -> age of its oldest waiting job
    workers: dict[str, int] = field(default_factory=dict)  # state (idle, busy ...) -> workers alive
    running_attempts: int = 0  # ftjobs leases (heartbeats) held
    counters: dict[str, dict[str, float]] = field(default_factory=dict)  # name -> label string -> value
    histograms: dict[str, dict[str, Histogram]] = field(default_factory=dict)  # name -> label string -> histogram
    job_gauges: dict[str, dict[tuple[str, str], float]] = field(default_factory=dict)  # name -> (tenant, job) -> v


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _enqueued_at(raw: Any) -> float | None:
    """RQ's `enqueued_at` (ISO 8601, UTC) as unix seconds."""
    if not raw:
        return None
    try:
        return datetime.fromisoformat(_text(raw).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def snapshot(redis: Redis, queues: Iterable[str], tenants: Iterable[str]) -> Snapshot:
    """Read the deployment's figures: `queues` and `tenants` configured, plus those Redis knows of."""
    snap = Snapshot()
    pipe = redis.pipeline(transaction=False)
    pipe.smembers(LINES_KEY)
    pipe.smembers("rq:queues")
    pipe.smembers(TENANTS_KEY)
    pipe.smembers(ACTIVE_JOBS_KEY)
    pipe.smembers("rq:workers")
    pipe.zcard(HEARTBEATS_KEY)
    pipe.zremrangebyscore(LIVE_KEY, "-inf", time.time() - LIVE_TTL_S)
    pipe.zrange(LIVE_KEY, 0, -1)
    lines_raw, rq_queues, seen, active, worker_keys, snap.running_attempts, _, live = pipe.execute()
    lines = [Line.parse(_text(m)) for m in lines_raw]
    names = sorted({*queues, *(line.queue for line in lines),
                    *(_text(q).removeprefix("rq:queue:") for q in rq_queues)})
    tenant_names = sorted({*tenants, *(_text(t) for t in seen), *(_text(m).split("|")[0] for m in active)})

    pipe = redis.pipeline(transaction=False)
    for tenant in tenant_names:
        for status in JobStatus:
            pipe.zcard(status_index_key(tenant, status))
    for name in names:
        pipe.llen(rq_queue_key(name))
        pipe.lrange(rq_queue_key(name), 0, OLDEST_SCAN - 1)
    for line in lines:
        pipe.zcard(pending_key(line.queue, line.tenant))
        pipe.zrange(pending_key(line.queue, line.tenant), 0, OLDEST_SCAN - 1)
    for key in worker_keys:
        pipe.hget(_text(key), "state")
    for name in COUNTERS:
        pipe.hgetall(counter_key(name))
    for name in BUCKETS:
        pipe.hgetall(histogram_key(name))
    for member in live:
        pipe.hgetall(gauges_key(_text(member)))
    results = iter(pipe.execute())

    for tenant in tenant_names:
        for status in JobStatus:
            snap.jobs[(tenant, str(status))] = int(next(results))
    waiting_ids: dict[str, list[str]] = {}
    for name in names:
        snap.queue_jobs[(name, "waiting")] = int(next(results))
        snap.queue_jobs[(name, "pending")] = 0
        waiting_ids[name] = [_text(i) for i in next(results)]
    for line in lines:
        key = (line.queue, "pending")
        snap.queue_jobs[key] = snap.queue_jobs.get(key, 0) + int(next(results))
        waiting_ids.setdefault(line.queue, []).extend(_text(i) for i in next(results))
    for _key in worker_keys:
        state = next(results)
        if state is not None:  # a registered worker whose hash expired is dead, not alive
            snap.workers[_text(state)] = snap.workers.get(_text(state), 0) + 1
    for name in COUNTERS:
        snap.counters[name] = {_text(k): float(v) for k, v in next(results).items()}
    for name in BUCKETS:
        snap.histograms[name] = _histograms(name, next(results))
    for member in live:
        tenant, job_id = _text(member).split("|", 1)
        for gauge, value in next(results).items():
            snap.job_gauges.setdefault(_text(gauge), {})[(tenant, job_id)] = float(value)
    _oldest(redis, snap, waiting_ids)
    return snap


def _oldest(redis: Redis, snap: Snapshot, waiting_ids: Mapping[str, list[str]]) -> None:
    """Each queue's oldest waiting job (in RQ's list or pending in a line), by its RQ `enqueued_at`."""
    pipe = redis.pipeline(transaction=False)
    order = [(name, rq_id) for name, ids in waiting_ids.items() for rq_id in ids]
    for _name, rq_id in order:
        pipe.hget(f"rq:job:{rq_id}", "enqueued_at")
    now = time.time()
    for name in waiting_ids:
        snap.queue_oldest_s[name] = 0.0
    for (name, _rq_id), raw in zip(order, pipe.execute() if order else [], strict=True):
        if (at := _enqueued_at(raw)) is not None:
            snap.queue_oldest_s[name] = max(snap.queue_oldest_s[name], now - at)


def _histograms(name: str, raw: Mapping[Any, Any]) -> dict[str, Histogram]:
    """The hash of one histogram metric -> per label string, Prometheus' cumulative buckets."""
    counts: dict[str, dict[str, float]] = {}
    for k, v in raw.items():
        labels, _, part = _text(k).rpartition("|")
        counts.setdefault(labels, {})[part] = float(v)
    out: dict[str, Histogram] = {}
    for labels, parts in counts.items():
        total, buckets = 0.0, []
        for bound in BUCKETS[name]:
            total += parts.get(str(bound), 0.0)
            buckets.append((float(bound), total))
        buckets.append((float("inf"), total + parts.get("+Inf", 0.0)))
        out[labels] = Histogram(buckets, parts.get("sum", 0.0), parts.get("count", 0.0))
    return out
