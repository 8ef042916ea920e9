"""Chaos: does every job reach a true terminal status while its machines keep dying?

Starts a stack (embedded Redis, the API, several training workers and the validator, supervised as `ftjobs up`
supervises them), submits jobs of a tiny causal LM built in code, then for a bounded time kills, every 20-40 s:
a running work horse, a work horse in its first seconds after dequeue (before the job's first write), a whole
worker (with its horse), Redis, or a worker with SIGTERM (a deploy). Then it waits for every job and prints:
submitted / succeeded / failed (codes) / stranded (no terminal status at the end: must be 0) / run to success
twice (must be 0), steps redone per lost attempt, kill-to-recovery p50 and max, and checks every succeeded
job's metric stream (one point per logged step, in order, up to the last step) and manifest (every file's
size and sha256).

    .venv/bin/python bench/chaos.py [--jobs 12] [--workers 3] [--minutes 10] [--steps 120] [--seed 0]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import httpx  # noqa: E402
from redis import Redis  # noqa: E402
from rq import Worker  # noqa: E402

from ftjobs.client.client import Client  # noqa: E402
from ftjobs.core import keys  # noqa: E402
from ftjobs.launch.stack import Stack  # noqa: E402
from tests.tiny_models import build_tiny_causal_lm  # noqa: E402

ROWS = [{"prompt": f"count to {n} :", "completion": " ".join(str(i) for i in range(1, n % 9 + 2))} for n in range(64)]
ENV = {
    "FTJOBS_HEARTBEAT_S": "1",
    "FTJOBS_STALE_AFTER_S": "6",
    "FTJOBS_CHECKPOINT_STEPS": "25",
    "FTJOBS_CHECKPOINT_S": "0",
    "FTJOBS_MAX_ATTEMPTS": "5",
    "FTJOBS_PREEMPT_S": "10",
    "OMP_NUM_THREADS": "1",  # several torch processes on few cores: one thread each
    "MKL_NUM_THREADS": "1",
}
KINDS = {"horse": 0.35, "early_horse": 0.25, "worker": 0.2, "redis": 0.12, "sigterm_worker": 0.08}
TERMINAL = {"succeeded", "failed", "cancelled"}


class Chaos:
    def __init__(self, stack: Stack, rng: random.Random, workers: int) -> None:
        self.stack, self.rng, self.workers = stack, rng, workers
        self.redis = Redis.from_url(stack.env["FTJOBS_REDIS_URL"], socket_connect_timeout=2)
        self.kills: list[dict[str, Any]] = []
        self.seen_horses: set[int] = set()

    # ------------------------------------------------------------------ processes

    def worker_pids(self) -> dict[str, int]:
        names = [f"worker-{n}" for n in range(1, self.workers + 1)] + ["validator"]
        return {name: pid for name in names if (pid := self.stack.pid(name))}

    def horses(self) -> dict[int, str]:
        """Live work horses -> the worker that forked them."""
        found = {}
        pids = {pid: name for name, pid in self.worker_pids().items()}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                if int(stat[1]) in pids and stat[0] != "Z":
                    found[int(entry.name)] = pids[int(stat[1])]
        return found

    def running_rq_job(self, worker_pid: int) -> str | None:
        """The RQ job id a worker process is running (RQ's worker hash), e.g. `ftjob-...-2` or `ftjob-...-0-3`."""
        for w in Worker.all(connection=self.redis):
            if w.pid == worker_pid:
                return w.get_current_job_id()
        return None

    # ------------------------------------------------------------------ kills

    def kill_one(self) -> None:
        kind = self.rng.choices(list(KINDS), weights=list(KINDS.values()))[0]
        try:
            getattr(self, f"_kill_{kind}")()
        except Exception as e:  # a process that died on its own meanwhile, Redis down from the last kill ...
            print(f"  chaos: {kind} kill skipped ({type(e).__name__}: {e})", flush=True)

    def _record(self, kind: str, rq_job: str | None, **extra: Any) -> None:
        job_id, attempt = _split_rq_id(rq_job)
        self.kills.append({"t": time.time(), "kind": kind, "job": job_id, "attempt": attempt, **extra})
        print(f"  {time.strftime('%H:%M:%S')} kill {kind}: {job_id or '-'} attempt {attempt}", flush=True)

    def _kill_horse(self) -> None:
        horses = self.horses()
        if not horses:
            return self._kill_idle()
        pid, worker = self.rng.choice(sorted(horses.items()))
        rq_job = self.running_rq_job(self.stack.pid(worker) or 0)
        os.kill(pid, signal.SIGKILL)
        self._record("horse", rq_job)

    def _kill_early_horse(self) -> None:
        """Wait for the next horse to be forked and kill it within its first seconds (before the job's writes)."""
        self.seen_horses |= set(self.horses())
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            fresh = {p: w for p, w in self.horses().items() if p not in self.seen_horses}
            if fresh:
                pid, worker = next(iter(fresh.items()))
                self.seen_horses.add(pid)
                time.sleep(self.rng.uniform(0, 2))
                rq_job = self.running_rq_job(self.stack.pid(worker) or 0)
                os.kill(pid, signal.SIGKILL)
                self._record("early_horse", rq_job)
                return
            time.sleep(0.01)
        self._kill_horse()  # nothing was dequeued meanwhile: a running horse (or, if none, something idle)

    def _kill_worker(self, sig: signal.Signals = signal.SIGKILL, kind: str = "worker") -> None:
        """A whole worker that is running a job (with its horse): the job's lease goes stale."""
        busy = sorted(set(self.horses().values()))
        if not busy:
            return self._kill_idle()
        name = self.rng.choice(busy)
        pid = self.stack.pid(name) or 0
        rq_job = self.running_rq_job(pid)
        os.kill(pid, sig)
        self._record(kind, rq_job, worker=name)

    def _kill_idle(self) -> None:
        """Nothing is running: Redis, or an idle worker (the jobs waiting in the queues must not notice)."""
        if self.rng.random() < 0.5:
            return self._kill_redis()
        name, pid = self.rng.choice(sorted(self.worker_pids().items()))
        os.kill(pid, signal.SIGKILL)
        self._record("idle_worker", None, worker=name)

    def _kill_sigterm_worker(self) -> None:
        self._kill_worker(signal.SIGTERM, "sigterm_worker")

    def _kill_redis(self) -> None:
        pid = self.stack.pid("redis")
        assert pid, "no embedded redis"
        killed = time.time()
        os.kill(pid, signal.SIGKILL)
        self._record("redis", None)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # back when the API answers /readyz again
            try:
                if httpx.get(f"{self.stack.url}/readyz", timeout=2).status_code == 200:
                    self.kills[-1]["recovered_s"] = time.time() - killed
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)


def _split_rq_id(rq_job: str | None) -> tuple[str | None, int | None]:
    if not rq_job:
        return None, None
    parts = rq_job.split("-")  # ftjob-<hex>-<attempt>[-<validation run>]
    return "-".join(parts[:2]), int(parts[2])


# ---------------------------------------------------------------------------------------------- analysis


def stream(redis: Redis, key: str) -> list[dict[str, Any]]:
    return [json.loads(fields[keys.STREAM_FIELD.encode()]) for _, fields in redis.xrange(key)]


def recovery_seconds(kill: dict[str, Any], events: list[dict[str, Any]]) -> float | None:
    """Kill -> the job moving again: a later attempt running, a new validation begun, or the job finished."""
    for e in events:
        if e["created_at"] < kill["t"]:
            continue
        data = e.get("data") or {}
        if kill["attempt"] == 0 and (e["message"].startswith("validating files on") or data.get("status") == "queued"):
            return float(e["created_at"] - kill["t"])
        if data.get("status") == "running" and (data.get("attempt") or 0) > (kill["attempt"] or 0):
            return float(e["created_at"] - kill["t"])
        if data.get("status") in TERMINAL:
            return float(e["created_at"] - kill["t"])
    return None


def steps_redone(events: list[dict[str, Any]]) -> list[int]:
    """Per attempt that started after a lost one: the train steps logged before it that it trained again."""
    reached = 0  # the furthest train step any earlier attempt logged
    redone = []
    for i, e in enumerate(events):
        data = e.get("data") or {}
        if e["type"] == "metrics" and data.get("split") == "train":
            reached = max(reached, data["step"])
        elif e["type"] == "status" and data.get("status") == "running" and data.get("attempt", 1) > 1:
            resumed = 0
            for later in events[i + 1 :]:
                later_data = later.get("data") or {}
                if later["type"] == "status":
                    break  # this attempt ended without resuming: it started over
                if "resumed_from_step" in later_data:
                    resumed = later_data["resumed_from_step"]
                    break
            redone.append(max(0, reached - resumed))
    return redone


def check_outputs(redis: Redis, store: Path, job: dict[str, Any]) -> list[str]:
    """Problems with a succeeded job's metric stream and manifest (none: [])."""
    problems = []
    points = stream(redis, keys.metrics_key(job["tenant"], job["id"]))
    seen = [(p["split"], p["step"], tuple(sorted(p["values"]))) for p in points]
    if len(seen) != len(set(seen)):
        problems.append("duplicate metric points")
    train = [p["step"] for p in points if p["split"] == "train"]
    if train != sorted(train) or not train or train[-1] != job["resolved"]["total_steps"]:
        problems.append(f"train steps {train[:3]}...{train[-3:]} of {job['resolved']['total_steps']}")
    folder = store / keys.job_dir(job["tenant"], job["id"]) / "artifacts"
    manifest = json.loads((folder / "manifest.json").read_text())
    for f in manifest["files"]:
        data = (folder / f["name"]).read_bytes()
        if len(data) != f["bytes"] or hashlib.sha256(data).hexdigest() != f["sha256"]:
            problems.append(f"artifact {f['name']} does not match the manifest")
    if (store / keys.checkpoints_dir(job["tenant"], job["id"])).exists():
        problems.append("checkpoints left behind")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=12)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--minutes", type=float, default=10.0, help="how long the kills go on")
    parser.add_argument("--steps", type=int, default=2500, help="optimizer steps per job")
    parser.add_argument("--wait-minutes", type=float, default=20.0, help="how long to wait for the jobs afterwards")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--kinds",
        help=f"kill weights, e.g. sigterm_worker=1,horse=1 (default {','.join(f'{k}={v}' for k, v in KINDS.items())})",
    )
    parser.add_argument("--data-dir", help="keep the stack's data here (default: a temporary folder)")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    if args.kinds:
        KINDS.clear()
        KINDS.update({k: float(v) for k, _, v in (item.partition("=") for item in args.kinds.split(","))})

    with tempfile.TemporaryDirectory(prefix="ftjobs-chaos-") as tmp:
        data = Path(args.data_dir or tmp).resolve()
        model = build_tiny_causal_lm(data / "models" / "tiny-causal-lm")
        env = {**ENV, "FTJOBS_MODEL_ROOTS": str(data / "models")}
        os.environ.pop("FTJOBS_REDIS_URL", None)
        with Stack(data, port=None, workers=args.workers, log_dir=data / "logs", env=env) as stack:
            supervising = threading.Event()

            def supervise() -> None:  # what `ftjobs up` does in its main loop
                while not supervising.wait(0.5):
                    stack.supervise_once()

            threading.Thread(target=supervise, daemon=True).start()
            client = Client(stack.url, max_retries=10)
            chaos = Chaos(stack, rng, args.workers)
            path = data / "train.jsonl"
            path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
            training_file = client.files.upload(path).id

            started = time.monotonic()
            end = started + args.minutes * 60
            submit_every = args.minutes * 60 * 0.7 / max(args.jobs, 1)  # jobs arrive over the first 70%
            job_ids: list[str] = []

            def kill_until_the_end() -> None:  # a thread: an early-horse kill may wait a while for its horse
                while (pause := rng.uniform(20, 40)) and time.monotonic() + pause < end:
                    time.sleep(pause)
                    chaos.kill_one()
                time.sleep(max(0.0, end - time.monotonic()))

            killer = threading.Thread(target=kill_until_the_end, daemon=True)
            killer.start()
            print(f"chaos for {args.minutes:g} min: {args.jobs} jobs, {args.workers} workers", flush=True)
            while len(job_ids) < args.jobs:
                time.sleep(max(0.0, started + len(job_ids) * submit_every - time.monotonic()))
                job = client.jobs.create(
                    model=str(model),
                    training_file=training_file,
                    method={"type": "lora", "r": 4, "alpha": 8},
                    hyperparameters={"max_steps": args.steps, "batch_size": 4, "max_seq_length": 32, "seed": 1},
                    idempotency_key=f"chaos-{args.seed}-{len(job_ids)}",
                )
                job_ids.append(job.id)
            killer.join()
            print("kills over; waiting for the jobs", flush=True)
            deadline = time.monotonic() + args.wait_minutes * 60
            redis = chaos.redis
            while time.monotonic() < deadline:
                states = [json.loads(redis.hget(keys.job_key("default", j), "status") or b'""') for j in job_ids]
                if all(s in TERMINAL for s in states):
                    break
                time.sleep(2)
            supervising.set()
            window = (chaos.kills[-1]["t"] - chaos.kills[0]["t"]) if chaos.kills else 0.0
            report(redis, data / "store", job_ids, chaos.kills, time.monotonic() - started, window, stack.restarts)
    return 0


def report(
    redis: Redis,
    store: Path,
    job_ids: list[str],
    kills: list[dict[str, Any]],
    seconds: float,
    window: float,
    restarts: Any,
) -> None:
    jobs = {
        j: {k.decode(): json.loads(v) for k, v in redis.hgetall(keys.job_key("default", j)).items()} for j in job_ids
    }
    events = {j: stream(redis, keys.events_key("default", j)) for j in job_ids}
    outcomes = Counter(job["status"] for job in jobs.values())
    codes = Counter(job["error"]["code"] for job in jobs.values() if job.get("error"))
    stranded = [j for j, job in jobs.items() if job["status"] not in TERMINAL]
    twice = [j for j in job_ids if sum((e.get("data") or {}).get("status") == "succeeded" for e in events[j]) > 1]
    redone = [n for j in job_ids for n in steps_redone(events[j])]
    recoveries = []
    for kill in kills:
        if kill["kind"] == "redis":
            if "recovered_s" in kill:
                recoveries.append(kill["recovered_s"])
        elif kill["job"] in events:
            if (r := recovery_seconds(kill, events[kill["job"]])) is not None:
                recoveries.append(r)
    problems = {
        j: p for j, job in jobs.items() if job["status"] == "succeeded" and (p := check_outputs(redis, store, job))
    }
    attempts = [job["attempt"] for job in jobs.values()]

    print("\n| measure | value |\n|---|---|")
    rows = [
        ("run time (chaos, then the wait for the last job)", f"{seconds / 60:.1f} min"),
        ("first to last kill", f"{window / 60:.1f} min"),
        ("kills", f"{len(kills)} ({', '.join(f'{k} {n}' for k, n in Counter(k['kind'] for k in kills).items())})"),
        ("kills that hit a job", str(sum(1 for k in kills if k["job"]))),
        ("restarts by the supervisor", ", ".join(f"{k} {v}" for k, v in sorted(restarts.items()) if v) or "0"),
        ("submitted", str(len(job_ids))),
        ("succeeded", str(outcomes.get("succeeded", 0))),
        ("failed (codes)", f"{outcomes.get('failed', 0)} {dict(codes) if codes else ''}".strip()),
        ("stranded (no terminal status)", str(len(stranded))),
        ("run to success twice", str(len(twice))),
        ("attempts per job (mean / max)", f"{statistics.mean(attempts):.2f} / {max(attempts)}" if attempts else "-"),
        (
            "steps redone per lost attempt (mean / max; checkpoint every 25)",
            f"{statistics.mean(redone):.1f} / {max(redone)} over {len(redone)}" if redone else "none",
        ),
        (
            "kill-to-recovery p50 / max",
            f"{statistics.median(recoveries):.1f} s / {max(recoveries):.1f} s over {len(recoveries)}"
            if recoveries
            else "-",
        ),
        ("succeeded jobs with a bad metric stream or manifest", str(len(problems))),
    ]
    for name, value in rows:
        print(f"| {name} | {value} |")
    for j, p in problems.items():
        print(f"  {j}: {'; '.join(p)}")
    if stranded:
        print("stranded:", ", ".join(f"{j} ({jobs[j]['status']}, attempt {jobs[j]['attempt']})" for j in stranded))


if __name__ == "__main__":
    raise SystemExit(main())
