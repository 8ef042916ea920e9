"""Prometheus metrics of the API: per-process HTTP figures (an ASGI middleware) and the deployment-wide figures
read from Redis at scrape time (a custom collector over `core/telemetry.snapshot`).

Per process (sum them over the replicas): `ftjobs_http_requests_total`, `ftjobs_http_request_duration_seconds`,
labelled by method, route template (`/v1/jobs/{job_id}`, never a raw path; `unmatched` for a 404 that matched no
route) and status. Deployment-wide (every replica reports the same value: take `max`, not `sum`): every other
`ftjobs_*` family: jobs by status and tenant, queues, workers, time to start, durations, training throughput,
GPU memory, upload bytes, webhook deliveries. Each app has its own registry (several apps live in one test process).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterable, Iterator
from typing import Any

from fastapi import FastAPI
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from redis import Redis
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ftjobs.core.settings import Settings
from ftjobs.core.telemetry import Snapshot, parse_labels, snapshot
from ftjobs.core.tenants import TenantsSource
from ftjobs.service.routes.metrics import router

log = logging.getLogger("ftjobs.metrics")
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
UNMATCHED = "unmatched"  # the route label of a request no route matched (a 404): raw paths would explode it
PARAM_CONVERTER = re.compile(r":\w+}")  # `{name:path}` -> `{name}`
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})  # anything else is "other"

# Histograms the workers write (core/telemetry.BUCKETS) -> (exported name, help, label names).
HISTOGRAMS = {
    "time_to_start_seconds": ("ftjobs_job_time_to_start_seconds", "Seconds from a job's creation to its first "
                              "running attempt (deployment-wide).", ()),
    "job_duration_seconds": ("ftjobs_job_duration_seconds", "Seconds from a job's first start to its end, by final "
                             "status (deployment-wide).", ("status",)),
    "training_step_seconds": ("ftjobs_training_step_seconds", "Seconds per optimizer step, as the workers measured "
                              "them (deployment-wide).", ()),
}
COUNTERS = {
    "jobs_finished_total": ("ftjobs_jobs_finished", "Jobs a worker ended, by final status.", ("status",)),
    "training_steps_total": ("ftjobs_training_steps", "Optimizer steps trained.", ()),
    "training_tokens_total": ("ftjobs_training_tokens", "Tokens trained on (rate() = tokens/s).", ()),
    "upload_bytes_total": ("ftjobs_upload_bytes", "Bytes of datasets stored by uploads.", ()),
    "uploads_total": ("ftjobs_uploads", "Datasets uploaded.", ()),
    "webhook_deliveries_total": ("ftjobs_webhook_deliveries", "Webhook delivery attempts, by outcome (delivered, "
                                 "retry, given_up, dropped).", ("outcome",)),
}
JOB_GAUGES = {
    "tokens_per_second": ("ftjobs_job_tokens_per_second", "A running job's training tokens per second."),
    "step_seconds": ("ftjobs_job_step_seconds", "A running job's seconds per step (its latest step)."),
    "gpu_memory_bytes": ("ftjobs_job_gpu_memory_bytes", "A running job's peak CUDA memory (absent on a CPU)."),
}


class DeploymentCollector(Collector):
    """Reads the deployment's figures from Redis at each scrape (a few pipelined round trips, no SCAN); the app's
    Redis client is looked up then, as its lifespan opened it."""

    def __init__(self, app: FastAPI, settings: Settings) -> None:
        self.app = app
        self.settings = settings

    def known_tenants(self) -> set[str]:
        tenants: TenantsSource = self.app.state.tenants
        current = tenants.current()
        return {"default", *(k.tenant for k in current.keys.values()), *current.overrides}

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("ftjobs_redis_up", "1 when this scrape could read Redis.")
        try:
            redis: Redis = self.app.state.redis
            snap = snapshot(redis, [self.settings.queue, self.settings.validate_queue], self.known_tenants())
        except Exception as exc:  # Redis down: the process figures still go out, and this says why the rest did not
            log.warning("metrics: Redis unreadable (%s)", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from families(snap)


def families(snap: Snapshot) -> Iterator[Metric]:
    """The Prometheus families of one snapshot."""
    jobs = GaugeMetricFamily("ftjobs_jobs", "Jobs by status and tenant (the status index).",
                             labels=["tenant", "status"])
    for (tenant, status), n in sorted(snap.jobs.items()):
        jobs.add_metric([tenant, status], n)
    yield jobs
    depth = GaugeMetricFamily("ftjobs_queue_jobs", "Jobs waiting per queue: `waiting` on RQ's list, `pending` in "
                              "the tenants' admission lines.", labels=["queue", "state"])
    for (queue, state), n in sorted(snap.queue_jobs.items()):
        depth.add_metric([queue, state], n)
    yield depth
    oldest = GaugeMetricFamily("ftjobs_queue_oldest_job_age_seconds", "Age of the oldest job waiting per queue "
                               "(0 when none waits).", labels=["queue"])
    for queue, age in sorted(snap.queue_oldest_s.items()):
        oldest.add_metric([queue], round(age, 3))
    yield oldest
    workers = GaugeMetricFamily("ftjobs_workers", "RQ workers alive, by state (busy, idle ...).", labels=["state"])
    for state in sorted({"busy", "idle", *snap.workers}):
        workers.add_metric([state], snap.workers.get(state, 0))
    yield workers
    running = GaugeMetricFamily("ftjobs_running_attempts", "Attempts holding a lease (a heartbeat) now.")
    running.add_metric([], snap.running_attempts)
    yield running
    for name, (exported, doc, label_names) in COUNTERS.items():
        counter = CounterMetricFamily(exported, doc, labels=list(label_names))
        for text, value in sorted(snap.counters.get(name, {}).items()):
            labels = parse_labels(text)
            counter.add_metric([labels.get(n, "") for n in label_names], value)
        yield counter
    for name, (exported, doc, label_names) in HISTOGRAMS.items():
        histogram = HistogramMetricFamily(exported, doc, labels=list(label_names))
        for text, h in sorted(snap.histograms.get(name, {}).items()):
            labels = parse_labels(text)
            buckets = [("+Inf" if b == float("inf") else repr(float(b)), c) for b, c in h.buckets]
            histogram.add_metric([labels.get(n, "") for n in label_names], buckets, h.sum)
        yield histogram
    for name, (exported, doc) in JOB_GAUGES.items():
        gauge = GaugeMetricFamily(exported, doc, labels=["tenant", "job_id"])  # `job` is Prometheus' own label
        for (tenant, job_id), value in sorted(snap.job_gauges.get(name, {}).items()):
            gauge.add_metric([tenant, job_id], value)
        yield gauge


def route_template(scope: Scope) -> str:
    """The template of the route that served the request (`/v1/jobs/{job_id}`); for one answered before routing (a
    401, 429 or 413 from a middleware), the route it would have reached; UNMATCHED for none."""
    route = scope.get("route") or _matching(scope, scope["app"].router.routes)
    template = getattr(route, "path", None)
    return PARAM_CONVERTER.sub("}", template) if template else UNMATCHED


def _matching(scope: Scope, routes: Iterable[Any]) -> Any:
    """The first route matching `scope`, looking inside included routers (FastAPI keeps them nested)."""
    for candidate in routes:
        if (inner := getattr(candidate, "original_router", None)) is not None:
            if (found := _matching(scope, inner.routes)) is not None:
                return found
        elif candidate.matches(scope)[0] != Match.NONE:
            return candidate
    return None


class HTTPMetrics:
    """Counts each HTTP request by method, route template and status, and times it to its last byte."""

    def __init__(self, app: ASGIApp, requests: Counter, duration: Histogram) -> None:
        self.app = app
        self.requests = requests
        self.duration = duration
        self._children: dict[tuple[str, str, str], tuple[Any, Any]] = {}  # labels -> (counter, histogram)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # unless a response starts: an exception escaped every handler
        streamed: float | None = None  # an event stream is timed to its first byte: it may stay open for hours

        async def send_status(message: Message) -> None:
            nonlocal status, streamed
            if message["type"] == "http.response.start":
                status = int(message["status"])
                if any(k == b"content-type" and v.startswith(b"text/event-stream") for k, v in message["headers"]):
                    streamed = time.perf_counter()
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            try:
                method = scope["method"] if scope["method"] in METHODS else "other"
                labels = (method, route_template(scope), str(status))
                if (children := self._children.get(labels)) is None:  # labels() takes a lock: once per label set
                    children = self._children[labels] = (self.requests.labels(*labels), self.duration.labels(*labels))
                children[0].inc()
                children[1].observe((streamed or time.perf_counter()) - started)
            except Exception:  # a figure must never fail the request it counts
                log.warning("metrics: request not counted", exc_info=True)


def install_metrics(app: FastAPI, settings: Settings) -> CollectorRegistry:
    """`GET /metrics` and the app's registry (`app.state.metrics`): the HTTP middleware, in front of everything
    added before it, and the deployment-wide collector."""
    registry = CollectorRegistry()
    requests = Counter("ftjobs_http_requests", "HTTP requests served by this process.",
                       ["method", "route", "status"], registry=registry)
    duration = Histogram("ftjobs_http_request_duration_seconds", "Seconds per HTTP request in this process (to the "
                         "response's last byte; an event stream's first).", ["method", "route", "status"],
                         registry=registry, buckets=HTTP_BUCKETS)
    registry.register(DeploymentCollector(app, settings))
    app.include_router(router)
    app.state.metrics = registry
    app.add_middleware(HTTPMetrics, requests=requests, duration=duration)
    return registry
