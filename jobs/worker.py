"""The worker process: `python -m jobs.worker [--queue Q] [--burst] [--name N]`.

An RQ forking `Worker` on one queue (JSON payloads, never pickle) plus a janitor thread that requeues
attempts whose heartbeat went stale (a worker killed, a machine lost). The parent process never imports
torch: RQ forks a work horse per job, and a fork after torch ran can hang, so torch lives in
`jobs.train.run` only. SIGTERM/SIGINT ask for RQ's warm shutdown (finish the current job, then exit);
a second signal is a cold shutdown.
"""

from __future__ import annotations

import argparse
import logging
import os
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from redis import Redis
from rq import Queue, Worker
from rq.serializers import JSONSerializer

from client.keys import HEARTBEATS_KEY, JobField, parse_heartbeat_member
from client.models import EventLevel, JobError, JobStatus
from jobs.report import Reporter
from jobs.storage import Store, remove_checkpoints

log = logging.getLogger("ftjobs.worker")

JOB_FUNCTION = "jobs.train.run"  # dotted path: the queue carries names, never code
VALIDATE_FUNCTION = "jobs.validate.run"


@dataclass(frozen=True)
class WorkerSettings:
    """Worker configuration from FTJOBS_* environment variables (read when called, never at import)."""

    redis_url: str
    data_dir: Path
    storage_url: str
    model_roots: tuple[Path, ...]
    queue: str
    validate_queue: str  # file validation (attempt 0) of every job: served first by every worker
    heartbeat_s: float  # seconds between heartbeats/progress writes of a running job
    stale_after_s: float  # a heartbeat older than this means the attempt's worker is gone
    max_attempts: int  # attempts per job before it fails with `worker_lost`
    job_timeout_s: int  # RQ's limit for one attempt (same variable as the API's enqueue)
    checkpoint_s: float = 600  # seconds between resumable checkpoints of a running job (0: none by time)
    checkpoint_steps: int = 0  # also one every this many optimizer steps (0: none by steps; tests use it)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> WorkerSettings:
        env = os.environ if environ is None else environ
        data_dir = Path(env.get("FTJOBS_DATA_DIR") or "./.ftjobs").resolve()
        roots = env.get("FTJOBS_MODEL_ROOTS") or str(data_dir / "models")
        return cls(
            redis_url=env.get("FTJOBS_REDIS_URL") or "redis://127.0.0.1:6379/0",
            data_dir=data_dir,
            storage_url=env.get("FTJOBS_STORAGE_URL") or f"file://{data_dir / 'store'}",
            model_roots=tuple(Path(r).expanduser() for r in roots.split(os.pathsep) if r),
            queue=env.get("FTJOBS_QUEUE") or "ftjobs-default",
            validate_queue=env.get("FTJOBS_VALIDATE_QUEUE") or "ftjobs-validate",
            heartbeat_s=float(env.get("FTJOBS_HEARTBEAT_S") or 5),
            stale_after_s=float(env.get("FTJOBS_STALE_AFTER_S") or 60),
            max_attempts=int(env.get("FTJOBS_MAX_ATTEMPTS") or 3),
            job_timeout_s=int(env.get("FTJOBS_JOB_TIMEOUT_S") or 7 * 24 * 3600),
            checkpoint_s=float(env.get("FTJOBS_CHECKPOINT_S") or 600),
            checkpoint_steps=int(env.get("FTJOBS_CHECKPOINT_STEPS") or 0),
        )


def redact_url(url: str) -> str:
    """The URL without its password, for log lines."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username or ''}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def enqueue_attempt(redis: Redis, queue: str, tenant: str, job_id: str, attempt: int, timeout_s: int) -> None:
    """Put one attempt of a job on an RQ queue, as the API does (JSON payload, RQ id `<job_id>-<attempt>`)."""
    Queue(queue, connection=redis, serializer=JSONSerializer).enqueue_call(
        JOB_FUNCTION,
        kwargs={"payload": {"job_id": job_id, "tenant": tenant, "attempt": attempt}},
        job_id=f"{job_id}-{attempt}",
        timeout=timeout_s,
        result_ttl=24 * 3600,  # seconds; the ftjobs record, not RQ's, is the lasting one
        failure_ttl=7 * 24 * 3600,
        description=f"train {job_id} (tenant {tenant}, attempt {attempt})",
    )


def enqueue_validation(redis: Redis, validate_queue: str, tenant: str, job_id: str, queue: str) -> None:
    """Put a job's file validation (attempt 0) on the validation queue; it hands the job on to `queue`."""
    Queue(validate_queue, connection=redis, serializer=JSONSerializer).enqueue_call(
        VALIDATE_FUNCTION,
        kwargs={"payload": {"job_id": job_id, "tenant": tenant, "attempt": 0, "queue": queue}},
        job_id=f"{job_id}-0-{int(time.time() * 1000)}",  # a retried validation gets a fresh RQ id
        timeout=3600,
        result_ttl=24 * 3600,
        failure_ttl=7 * 24 * 3600,
        description=f"validate files of {job_id} (tenant {tenant})",
    )


class Janitor(threading.Thread):
    """Finds attempts whose heartbeat is older than `stale_after_s`; requeues them or fails the job."""

    def __init__(self, redis: Redis, settings: WorkerSettings, default_queue: str) -> None:
        super().__init__(name="ftjobs-janitor", daemon=True)
        self.redis = redis
        self.settings = settings
        self.default_queue = default_queue
        self.interval_s = max(0.2, settings.stale_after_s / 4)
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(self.interval_s):
            try:
                self.sweep()
            except Exception:  # a Redis blip must not kill the thread; the next sweep retries
                log.exception("janitor sweep failed")

    def stop(self) -> None:
        self._stop_event.set()

    def sweep(self, now: float | None = None) -> int:
        """Handle every stale heartbeat once; returns how many were found."""
        cutoff = (time.time() if now is None else now) - self.settings.stale_after_s
        members: list[bytes] = self.redis.zrangebyscore(HEARTBEATS_KEY, "-inf", cutoff)  # type: ignore[assignment]
        for raw in members:
            score = self.redis.zscore(HEARTBEATS_KEY, raw)
            if score is None or score > cutoff:
                continue  # it beat again since we looked, or another janitor took it
            member = raw.decode() if isinstance(raw, bytes) else str(raw)
            try:
                self._recover(*parse_heartbeat_member(member))
            finally:
                self.redis.zrem(HEARTBEATS_KEY, raw)
        return len(members)

    def _recover(self, tenant: str, job_id: str, attempt: int) -> None:
        reporter = Reporter(self.redis, tenant, job_id, attempt)
        record = reporter.read()
        phase = JobStatus.validating_files if attempt == 0 else JobStatus.running
        if not record or record.get(JobField.status) != phase or record.get(JobField.attempt) != attempt:
            return  # finished, cancelled or already requeued: only the heartbeat is left to clean up
        silence = f"worker lost (no heartbeat for {self.settings.stale_after_s:g} s)"
        if attempt == 0:
            self._retry_validation(reporter, record, silence)
            return
        if record.get(JobField.cancel_requested):  # the user wanted it stopped anyway: no new attempt
            if reporter.finish(JobStatus.cancelled):
                remove_checkpoints(Store(self.settings.storage_url), tenant, job_id)
            return
        if attempt < self.settings.max_attempts:
            if reporter.requeue(silence):
                # The job's own queue (recorded by the worker that started it) keeps its hardware class.
                queue = (record.get(JobField.resolved) or {}).get("queue") or self.default_queue
                enqueue_attempt(self.redis, queue, tenant, job_id, attempt + 1, self.settings.job_timeout_s)
                log.warning(
                    "janitor: %s attempt %d lost; requeued as attempt %d", job_id, attempt, attempt + 1
                )
            return
        error = JobError(
            code="worker_lost",
            message=f"{silence} on attempt {attempt}; no attempts left (max {self.settings.max_attempts})",
        )
        if reporter.finish(JobStatus.failed, error=error):
            log.warning("janitor: %s attempt %d lost; no attempts left, failed", job_id, attempt)
            remove_checkpoints(Store(self.settings.storage_url), tenant, job_id)

    def _retry_validation(self, reporter: Reporter, record: dict, silence: str) -> None:
        """A lost file validation runs again (it is cheap and repeatable), up to max_attempts times."""
        resolved = dict(record.get(JobField.resolved) or {})
        tries = int(resolved.get("validation_attempts") or 1)
        if tries >= self.settings.max_attempts:
            message = f"{silence} while validating files, {tries} times; no attempts left"
            reporter.finish(JobStatus.failed, error=JobError(code="worker_lost", message=message))
            log.warning("janitor: %s validation lost %d times, failed", reporter.job_id, tries)
            return
        if reporter.resolved({"validation_attempts": tries + 1}):
            reporter.event(f"{silence} while validating files; validating again", level=EventLevel.warning)
            queue = resolved.get("queue") or self.default_queue
            enqueue_validation(self.redis, self.settings.validate_queue, reporter.tenant, reporter.job_id, queue)
            log.warning("janitor: %s validation lost; enqueued again", reporter.job_id)


def main(argv: Sequence[str] | None = None) -> int:
    """Run a worker until SIGTERM/SIGINT (or until the queue is empty with --burst)."""
    parser = argparse.ArgumentParser(prog="ftjobs worker", description="Run an ftjobs training worker.")
    parser.add_argument("--queue", help="queue to serve (default: $FTJOBS_QUEUE or ftjobs-default)")
    parser.add_argument("--burst", action="store_true", help="exit when the queue is empty")
    parser.add_argument("--name", help="worker name (default: RQ's, unique per process)")
    parser.add_argument(
        "--validate-only",
        action="store_true",
        help="serve only the file validation queue ($FTJOBS_VALIDATE_QUEUE): a light worker with no training",
    )
    args = parser.parse_args(argv)

    settings = WorkerSettings.from_env()
    queue_name = args.queue or settings.queue
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    connection = Redis.from_url(settings.redis_url)
    # Validations first: they take seconds and tell a user early that a job cannot train.
    names = [settings.validate_queue] + ([] if args.validate_only else [queue_name])
    queues = [Queue(name, connection=connection, serializer=JSONSerializer) for name in names]
    worker = Worker(queues, connection=connection, name=args.name, serializer=JSONSerializer)
    # The janitor gets its own connection: the forked work horse never touches it.
    janitor = Janitor(Redis.from_url(settings.redis_url), settings, queue_name)
    janitor.start()
    print(
        f"worker {worker.name} listening on {', '.join(names)} (redis {redact_url(settings.redis_url)})", flush=True
    )
    try:
        worker.work(burst=args.burst, logging_level="INFO")
    finally:
        janitor.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
