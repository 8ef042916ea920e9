"""The API's hot reads against a bare FastAPI hello, side by side: real uvicorn processes, real Redis.

    .venv/bin/python bench/api_reads.py [--seconds 2] [--rounds 5] [--connections 32] [--routes get list ...]

Both apps run under the same uvicorn command line (`--no-access-log`, uvicorn's default loop and HTTP parser: uvloop
and httptools when installed). The API has auth on (a key in a tenants file, a request rate high enough never to
refuse), so every request pays the key lookup and the rate limiter's Redis script. Load: N keep-alive
connections on one asyncio loop in this process, each sending GETs back to back; req/s, p50 and p99 per route, and
the ratio to the hello as the median over rounds of each run against the hello run just before it (the machine's
load drifts between rounds).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from fastapi import FastAPI
from redis import Redis

from ftjobs.client.models import JobCreate, MetricPoint
from ftjobs.core import keys
from ftjobs.core.records import event_entry, metric_entry, new_id
from ftjobs.core.tenants import key_hash
from ftjobs.launch.embedded import free_port, start_redis
from ftjobs.service.store import Store

REPO = Path(__file__).resolve().parent.parent
KEY = "bench-key-0123456789"
TENANT = "alpha"

hello_app = FastAPI()  # the floor: what uvicorn + FastAPI answer with no work at all


@hello_app.get("/hello")
async def hello() -> dict[str, str]:
    return {"hello": "world"}


def seed(redis: Redis, jobs: int, events: int) -> str:
    """`jobs` job records of TENANT, the last with `events` events and metric points; its id."""
    store = Store(redis)
    file_id = new_id("file-")
    job_id = ""
    for _ in range(jobs):
        job_id = new_id("ftjob-")
        store.create_job(TENANT, JobCreate(model="tiny", training_file=file_id), job_id, queue=None)
    pipe = redis.pipeline(transaction=False)
    for n in range(events):
        pipe.xadd(keys.events_key(TENANT, job_id), {keys.STREAM_FIELD: event_entry(f"step {n}", data={"step": n})})
        point = MetricPoint(
            id="", step=n, epoch=n / 100, split="train", created_at=time.time(), values={"loss": 1 / (n + 1)}
        )
        pipe.xadd(keys.metrics_key(TENANT, job_id), {keys.STREAM_FIELD: metric_entry(point)})
    pipe.execute()
    return job_id


@contextmanager
def uvicorn(target: str, env: dict[str, str], log: Path, factory: bool = False, cwd: Path = REPO) -> Iterator[str]:
    """`python -m uvicorn <target>` on a free port with the API's own flags, run in `cwd`; its base URL."""
    port = free_port()
    argv = [sys.executable, "-m", "uvicorn", *(["--factory"] if factory else []), target]
    argv += ["--port", str(port), "--no-access-log", "--app-dir", str(REPO / "bench")]
    with open(log, "ab") as out:
        proc = subprocess.Popen(argv, cwd=cwd, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, log.read_text(errors="replace")
            try:
                httpx.get(url + "/", timeout=1)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, log.read_text(errors="replace")
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


@contextmanager
def api_env(tmp: Path) -> Iterator[tuple[dict[str, str], Redis]]:
    """An embedded Redis and the FTJOBS_* environment of an API on it, with auth and a (never reached) rate."""
    server = start_redis(tmp / "redis", persist=False)
    tenants = tmp / "tenants.toml"
    tenants.write_text(
        f'[tenants.{TENANT}]\nrequests_per_second = 1000000\n[[tenants.{TENANT}.keys]]\nsha256 = "{key_hash(KEY)}"\n'
    )
    env = {
        "FTJOBS_REDIS_URL": server.url,
        "FTJOBS_DATA_DIR": str(tmp / "data"),
        "FTJOBS_STORAGE_URL": f"file://{tmp / 'store'}",
        "FTJOBS_TENANTS_FILE": str(tenants),
        "FTJOBS_LOG_LEVEL": "WARNING",
    }
    redis = Redis.from_url(server.url)
    try:
        yield env, redis
    finally:
        redis.close()
        server.stop()


async def _connection(host: str, port: int, request: bytes, until: float, latencies: list[float]) -> None:
    """One keep-alive connection sending `request` back to back until `until` (a 200 with Content-Length each)."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while time.perf_counter() < until:
            started = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200"), head[:200]
            length = next(int(h.split(b":")[1]) for h in head.lower().split(b"\r\n") if h.startswith(b"content-length"))
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - started)
    finally:
        writer.close()


def load(
    url: str, path: str, seconds: float, connections: int, headers: dict[str, str] | None = None
) -> tuple[float, float, float]:
    """(req/s, p50 ms, p99 ms) of GET `path` over `connections` keep-alive connections for `seconds`."""
    host, port = url.removeprefix("http://").split(":")
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    request = f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n".encode()
    latencies: list[float] = []

    async def run() -> None:
        until = time.perf_counter() + seconds
        await asyncio.gather(*(_connection(host, int(port), request, until, latencies) for _ in range(connections)))

    asyncio.run(run())
    ms = sorted(x * 1000 for x in latencies)
    return len(ms) / seconds, statistics.median(ms), ms[int(len(ms) * 0.99)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="per round and app")
    parser.add_argument("--rounds", type=int, default=5, help="alternating hello/route rounds per route")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--jobs", type=int, default=100, help="job records of the tenant")
    parser.add_argument("--events", type=int, default=300, help="events and metric points of the job read")
    parser.add_argument(
        "--before",
        type=Path,
        help="also serve another checkout's API (PYTHONPATH: a folder holding its `ftjobs` package) in each round",
    )
    parser.add_argument("--routes", nargs="*", help="only these routes: get, list, events, metrics, files")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, api_env(Path(tmp)) as (env, redis):
        job_id = seed(redis, args.jobs, args.events)
        auth = {"Authorization": f"Bearer {KEY}"}
        routes = {
            "job get": f"/v1/jobs/{job_id}",
            "job list (20)": "/v1/jobs?limit=20",
            "events (100)": f"/v1/jobs/{job_id}/events?limit=100",
            "metrics (100)": f"/v1/jobs/{job_id}/metrics?limit=100",
            "file list": "/v1/files",
        }
        if args.routes:
            short = dict(zip(("get", "list", "events", "metrics", "files"), routes, strict=True))
            routes = {short[r]: routes[short[r]] for r in args.routes}
        results: dict[str, dict[str, list[tuple[float, float, float]]]] = {}
        before_env = {**env, "PYTHONPATH": str(args.before)} if args.before else env
        with (
            uvicorn("api_reads:hello_app", env, Path(tmp) / "hello.log") as hello_url,
            uvicorn("ftjobs.service.main:app_from_env", env, Path(tmp) / "api.log", factory=True) as api_url,
            uvicorn(
                "ftjobs.service.main:app_from_env", before_env, Path(tmp) / "before.log", True, Path(tmp)
            ) as before_url,
        ):
            with httpx.Client(base_url=api_url, headers=auth) as http:
                assert http.get(f"/v1/jobs/{job_id}").status_code == 200
            load(hello_url, "/hello", 1, args.connections)  # warm-up
            load(api_url, f"/v1/jobs/{job_id}", 1, args.connections, auth)
            # The machine's load drifts: each route alternates with the floor, round by round.
            for name, path in routes.items():
                runs = results.setdefault(name, {"hello": [], "before": [], "after": []})
                for _ in range(args.rounds):
                    runs["hello"].append(load(hello_url, "/hello", args.seconds, args.connections))
                    if args.before:
                        runs["before"].append(load(before_url, path, args.seconds, args.connections, auth))
                    runs["after"].append(load(api_url, path, args.seconds, args.connections, auth))
    print(f"{args.connections} connections, {args.rounds} x {args.seconds:.1f} s per route and app, uvicorn's defaults")
    print("x hello: the median over the rounds of the route's req/s over the hello's run just before it")
    print(f"{'route':<16}{'':<8}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'x hello':>9}")
    for name, runs in results.items():
        hello_rps = statistics.mean(f[0] for f in runs["hello"])
        print(f"{name:<16}{'hello':<8}{hello_rps:>9.0f}")
        for label in ("before", "after"):
            if runs[label]:
                rps = statistics.mean(r[0] for r in runs[label])
                p50 = statistics.median(r[1] for r in runs[label])
                p99 = statistics.median(r[2] for r in runs[label])
                ratio = statistics.median(r[0] / h[0] for r, h in zip(runs[label], runs["hello"], strict=True))
                print(f"{'':<16}{label:<8}{rps:>9.0f}{p50:>9.1f}{p99:>9.1f}{ratio:>9.3f}")


if __name__ == "__main__":
    main()
