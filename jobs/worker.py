"""The worker process: `python -m ftjobs.jobs.worker [--queue Q] [--burst] [--name N] [--validate-only | --train-only]`.

An RQ forking `Worker` (JSON payloads, never pickle) that holds a lease on the job it runs from the moment it
takes it, plus a reconciler thread (jobs/reconcile.py) that moves on jobs whose attempt died anywhere. RQ
forks a work horse per job, which dies with its worker (PR_SET_PDEATHSIG).

Warm starts (FTJOBS_PRELOAD, on by default): before its work loop the worker imports the job modules (torch,
transformers, peft, ...; ~7 s of CPU) once, so each horse forks with them loaded instead of paying them per job.
The worker itself never runs a torch op: a fork after torch ran ops can hang (its OpenMP pool, CUDA), importing
is safe; if an import set CUDA up all the same (bitsandbytes does, on a GPU), the worker restarts itself without
preloading. Thread budget (FTJOBS_TORCH_THREADS, default OMP_NUM_THREADS or every core): OMP/MKL/OpenBLAS pools are
sized in the environment before any import, and each horse calls torch.set_num_threads with it, so several
workers on one host do not oversubscribe its cores (`ftjobs up` gives each worker its share).

- A horse that dies (OOM kill, segfault, SIGKILL), before or after the job's first write: the worker sees it at
  once and recovers the job (the next attempt resumes from its checkpoint).
- SIGTERM/SIGINT (a deploy, a spot preemption, `ftjobs up` stopping): the horse saves a checkpoint at its next
  step end and hands the job back, which goes to the front of its queue without spending an attempt; after
  FTJOBS_PREEMPT_S (default 30) the horse is killed and the job goes back from its last checkpoint. Then the
  worker exits. A second signal is a cold shutdown (the same hand-back, at once).
- A pause (service/pausing.py) ends the horse like a preemption does, after the checkpoint, with the job `paused`
  (jobs/train.py): `recover` leaves it alone, and the worker and the tenant's running slot are free for the next job.

Fair admission (core/admission.py): the moment the worker takes a job from RQ (here, before the horse forks) it
admits that tenant's next pending job into RQ; when the horse is gone it frees the job's running slot, which
admits the tenant's next training job if `max_running_jobs` held it back.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from pydantic import ValidationError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from rq import Queue, Worker
from rq.job import Job as RQJob
from rq.serializers import JSONSerializer
from rq.worker import WorkerStatus

from ftjobs.client.models import QueuePayload
from ftjobs.core import annotation, exports
from ftjobs.core.admission import Line
from ftjobs.core.keys import HEARTBEATS_KEY, heartbeat_member
from ftjobs.core.logs import bind_job, setup_logging
from ftjobs.core.monitors import MONITOR_FUNC
from ftjobs.core.queue import MEMBER_FUNC, TRAIN_FUNC, VALIDATE_FUNC, JobQueue, NodePayload, connect, redact_url
from ftjobs.core.settings import Settings
from ftjobs.jobs.hardware import record_hardware
from ftjobs.jobs.interrupts import INTERRUPTER, PREEMPT_SIGNAL
from ftjobs.jobs.monitor import MonitorPayload, ScheduledRuns
from ftjobs.jobs.reconcile import Reconciler, recover
from ftjobs.jobs.sweep_driver import SweepDriver

log = logging.getLogger("ftjobs.worker")


class JobWorker(Worker):
    """RQ's forking worker with ftjobs' lease, crash recovery and preemption around each job it runs."""

    def __init__(self, *args: Any, settings: Settings, **kw: Any) -> None:
        super().__init__(*args, job_monitoring_interval=max(1, round(settings.heartbeat_s)), **kw)
        self.settings = settings
        self._payload: QueuePayload | None = None  # the ftjobs attempt the current horse runs
        self._preempt_deadline: float | None = None  # monotonic; set when a stop was asked for mid-job
        self._horse_status: int | None = None  # waitpid status of a horse that died
        self.jobq = JobQueue(self.connection, settings)  # admission; limits from the tenants file

    # ----------------------------------------------------------------- around one job (the worker process)

    def execute_job(self, job: RQJob, queue: Queue) -> None:
        if not _ours(job):
            # Whoever can write to Redis can enqueue any importable function (`os.system`); a worker runs only
            # ftjobs' own two job functions, with a payload that parses.
            log.error("refused RQ job %s on %s: %r is not an ftjobs job", job.id, queue.name, _func_name(job))
            self.handle_job_failure(job, queue, exc_string="refused: not an ftjobs job function")
            return
        self._payload = _payload(job)
        self._horse_status = None
        payload, request_id = self._payload, (job.meta or {}).get("request_id")
        bind_job(payload.job_id if payload else None, payload.tenant if payload else None, request_id)
        if self._payload is not None:
            self._renew_lease()  # ours from now on, before the horse imports anything
        line = self.jobq.line_of(job)
        if line is not None:
            self._admission(self.jobq.admission.take, line, job.id)  # the tenant's next job into RQ
        try:
            super().execute_job(job, queue)
        finally:
            payload, self._payload = self._payload, None
            if payload is not None:
                self._after_horse(payload)
            if line is not None:  # after a requeue (first in its line): its slot goes to the best next job
                self._admission(self.jobq.admission.release, line, job.id)
            bind_job(None, None)

    def _admission(self, step: Callable[[Line, str], list[str]], line: Line, rq_id: str) -> None:
        try:
            admitted = step(line, rq_id)
            if admitted:
                log.info("admitted %s into %s (tenant %s)", ", ".join(admitted), line.queue, line.tenant)
        except Exception:  # Redis unreachable: the reconciler re-admits the line later
            log.warning("admission after %s failed", rq_id, exc_info=True)

    def maintain_heartbeats(self, job: RQJob, execution: Any) -> None:
        super().maintain_heartbeats(job, execution)
        if self._payload is not None:
            self._renew_lease()
        if self._preempt_deadline is not None and time.monotonic() > self._preempt_deadline and self.horse_pid:
            log.warning("job did not hand itself back within %g s; killing its work horse", self.settings.preempt_s)
            self.kill_horse(signal.SIGKILL)

    def handle_work_horse_killed(self, job: RQJob, retpid: int, ret_val: int, rusage: Any) -> None:
        self._horse_status = ret_val
        super().handle_work_horse_killed(job, retpid, ret_val, rusage)

    def _renew_lease(self) -> None:
        p = self._payload
        assert p is not None
        with contextlib.suppress(RedisConnectionError, RedisTimeoutError):  # the reconciler waits for Redis too
            self.connection.zadd(HEARTBEATS_KEY, {heartbeat_member(p.tenant, p.job_id, p.attempt): time.time()})

    def _after_horse(self, p: QueuePayload) -> None:
        """The horse is gone: if it left the job unfinished at its attempt, move the job on now."""
        preempted = self._preempt_deadline is not None
        if self._horse_status is not None and os.WIFSIGNALED(self._horse_status):
            how = f"killed by signal {os.WTERMSIG(self._horse_status)}"
        elif self._horse_status is not None:
            how = f"exited with status {os.WEXITSTATUS(self._horse_status)}"
        else:
            how = "returned"
        reason = "the worker is stopping" if preempted else f"the work horse {how}"
        try:
            done = recover(self.connection, self.settings, p.tenant, p.job_id, p.attempt, reason, free=preempted)
            if done:
                log.warning("%s attempt %d: %s -> %s", p.job_id, p.attempt, reason, done)
        except Exception:  # Redis unreachable: the reconciler finds the stale lease later
            log.warning("could not recover %s attempt %d", p.job_id, p.attempt, exc_info=True)
        with contextlib.suppress(RedisConnectionError, RedisTimeoutError):
            self.connection.zrem(HEARTBEATS_KEY, heartbeat_member(p.tenant, p.job_id, p.attempt))

    # ----------------------------------------------------------------- stopping

    def _shutdown(self) -> None:
        """First SIGTERM/SIGINT: ask the horse to checkpoint and hand its job back, then exit (RQ's warm stop)."""
        if self.get_state() == WorkerStatus.BUSY and self.horse_pid and self._preempt_deadline is None:
            self._preempt_deadline = time.monotonic() + self.settings.preempt_s
            log.warning("stopping: the running job checkpoints and goes back to its queue (at most %g s)",
                        self.settings.preempt_s)
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.horse_pid, PREEMPT_SIGNAL)
        super()._shutdown()

    def unsubscribe(self) -> None:
        """RQ's, bounded: redis-py 8's PubSubWorkerThread.stop() joins its thread, which can wait up to RQ's
        sleep_time (60 s) for a subscription that the unsubscribe just ended; it is a daemon: 1 s is enough."""
        if self.pubsub_thread:
            self.pubsub.unsubscribe()
            try:
                self.pubsub_thread.stop(timeout=1)  # type: ignore[call-arg]
            except TypeError:  # redis-py before 8: stop() does not wait
                self.pubsub_thread.stop()
            self.pubsub_thread.join(timeout=1)
            self.pubsub.close()

    def request_force_stop(self, signum: int, frame: Any) -> None:
        """Second signal: kill the horse now; its job still goes back to the front of its queue (_after_horse)."""
        if self._preempt_deadline is None:
            self._preempt_deadline = time.monotonic()
        super().request_force_stop(signum, frame)

    # ----------------------------------------------------------------- the horse (a forked child)

    def main_work_horse(self, job: RQJob, queue: Queue) -> None:
        _die_with_parent()
        _set_torch_threads(thread_budget(self.settings))
        INTERRUPTER.install(preempt_grace_s=self.settings.preempt_s / 2)  # half to end the step, half to save
        super().main_work_horse(job, queue)


    def perform_job(self, job: RQJob, queue: Queue, *args: Any, **kw: Any) -> bool:
        try:
            return bool(super().perform_job(job, queue, *args, **kw))
        finally:  # what the job ran with, in the worker's log (`-`: it never loaded torch)
            torch = sys.modules.get("torch")
            threads = torch.get_num_threads() if torch is not None else "-"
            log.info("work horse %d: %s torch threads (preloaded: %s)", os.getpid(), threads, self.settings.preload)


def _func_name(job: RQJob) -> str | None:
    try:
        return job.func_name
    except Exception:  # data this worker cannot even decode (another serializer): not ours either
        return None


def _ours(job: RQJob) -> bool:
    """One of ftjobs' job functions, called with one `payload` keyword that is a valid QueuePayload."""
    try:
        plain_call = not job.args and set(job.kwargs or {}) == {"payload"}
    except Exception:
        return False
    if _func_name(job) == MONITOR_FUNC:  # a monitor's scheduled run (jobs/monitor.py): its own payload
        return plain_call and _monitor_payload(job)
    if _func_name(job) == exports.EXPORT_FUNC:  # an export for serving (jobs/export_job.py): its own payload
        return plain_call and exports.payload_fields((job.kwargs or {}).get("payload")) is not None
    if _func_name(job) == MEMBER_FUNC:  # a member node of a multi-node attempt (jobs/node.py): no lease, no line
        return plain_call and _node_payload(job)
    if _func_name(job) == annotation.ANNOTATE_FUNC:  # labeling functions on a file (jobs/annotate_job.py)
        return plain_call and annotation.payload_fields((job.kwargs or {}).get("payload")) is not None
    return _func_name(job) in (TRAIN_FUNC, VALIDATE_FUNC) and plain_call and _payload(job) is not None


def _monitor_payload(job: RQJob) -> bool:
    try:
        MonitorPayload.model_validate((job.kwargs or {}).get("payload"))
    except (ValidationError, TypeError, ValueError):
        return False
    return True


def _node_payload(job: RQJob) -> bool:
    try:
        NodePayload.model_validate((job.kwargs or {}).get("payload"))
    except (ValidationError, TypeError, ValueError):
        return False
    return True


def _payload(job: RQJob) -> QueuePayload | None:
    """The ftjobs attempt an RQ job runs (None for anything else on the queue)."""
    try:
        return QueuePayload.model_validate((job.kwargs or {}).get("payload"))
    except (ValidationError, TypeError, ValueError):
        return None


def _die_with_parent() -> None:
    """In the horse: Linux kills it if its worker dies, so a job never runs on unsupervised (best effort)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    parent = os.getppid()
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the worker died before prctl took effect
        os._exit(1)


PRELOAD_VALIDATE = ("ftjobs.jobs.validate", "sklearn.model_selection", "datasketch", "cleanlab.filter")
# What every training attempt imports, lazily or not; task-specific extras (trl for dpo, bitsandbytes) stay lazy.
PRELOAD_TRAIN = ("ftjobs.jobs.train", "ftjobs.jobs.node", "ftjobs.jobs.training.continuation", "peft",
                 "matplotlib.pyplot", "sacrebleu", "rouge_score.rouge_scorer")
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def thread_budget(settings: Settings) -> int:
    """This worker's torch threads: FTJOBS_TORCH_THREADS, else OMP_NUM_THREADS, else every core it may use."""
    if settings.torch_threads:
        return settings.torch_threads
    with contextlib.suppress(ValueError):
        if (omp := int(os.environ.get("OMP_NUM_THREADS", "").strip() or 0)) > 0:
            return omp
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def apply_thread_budget(threads: int) -> None:
    """Before anything imports torch or numpy: their thread pools read these variables once, when they start."""
    for name in THREAD_VARS:
        os.environ[name] = str(threads)


def _set_torch_threads(threads: int) -> int | None:
    """In a horse, before its job's first torch op; None when torch is not loaded (the environment covers it)."""
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    torch.set_num_threads(threads)
    with contextlib.suppress(RuntimeError):  # only possible before the inter-op pool started: a fresh horse
        torch.set_num_interop_threads(threads)
    return int(torch.get_num_threads())


def preload(validate_only: bool) -> float:
    """Import the job modules once, here, so every horse forks with them loaded; runs no torch op. Seconds taken."""

    def stop(signum: int, frame: Any) -> None:  # a stop before the work loop: nothing runs yet, a clean exit
        log.info("stopped while preloading")
        raise SystemExit(0)

    started = time.monotonic()
    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        _import_all(PRELOAD_VALIDATE + (() if validate_only else PRELOAD_TRAIN))
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return time.monotonic() - started


def _cuda_initialised() -> bool:
    """Whether torch set CUDA up in this process (a fork after that cannot use the GPU)."""
    torch = sys.modules.get("torch")
    return bool(torch is not None and torch.cuda.is_initialized())


def _import_all(names: tuple[str, ...]) -> None:
    """Each module by name; one that is missing (an optional extra) is logged and skipped."""
    import importlib
    import warnings

    for name in names:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if name == "matplotlib.pyplot":
                    importlib.import_module("matplotlib").use("Agg")  # as jobs/outputs/plots.py: no display
                importlib.import_module(name)
        except ImportError as e:  # an optional extra not installed: the job that needs it says so itself
            log.info("preload: %s not loaded (%s)", name, e)


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
    parser.add_argument(
        "--train-only",
        action="store_true",
        help="serve only the training queue: for a pool of accelerator workers beside --validate-only ones",
    )
    args = parser.parse_args(argv)
    if args.validate_only and args.train_only:
        parser.error("--validate-only and --train-only exclude each other")

    settings = Settings.from_env()
    settings = settings.model_copy(update={"queue": args.queue or settings.queue})
    setup_logging("worker", settings)  # FTJOBS_LOG_FORMAT; rq's per-job INFO lines and progress bars off
    threads = thread_budget(settings)
    apply_thread_budget(threads)
    if settings.preload:
        seconds = preload(args.validate_only)
        if _cuda_initialised():  # an import (bitsandbytes, via peft) set CUDA up: a forked horse could not use it
            log.warning("preloading initialised CUDA, which forked work horses cannot use: restarting without it")
            os.execve(sys.executable, [sys.executable, "-m", "ftjobs.jobs.worker", *(sys.argv[1:] if argv is None
                      else argv)], {**os.environ, "FTJOBS_PRELOAD": "0"})  # fmt: skip
        log.info("preloaded the job modules in %.1f s (%d torch threads per job)", seconds, threads)
    connection = connect(settings.redis_url)
    # Validations first: they take seconds and tell a user early that a job cannot train.
    names = ([] if args.train_only else [settings.validate_queue]) + ([] if args.validate_only else [settings.queue])
    queues = [JobQueue(connection, settings).queue(name) for name in names]
    worker = JobWorker(queues, connection=connection, name=args.name, serializer=JSONSerializer, settings=settings)
    # The reconciler gets its own connection: the forked work horse never touches it.
    reconciler = Reconciler(connect(settings.redis_url), settings)
    reconciler.start()
    sweeps = SweepDriver(connect(settings.redis_url), settings)  # starts and settles sweeps' trials
    sweeps.start()
    # RQ's scheduler, for the monitors' runs waiting in the validation queue's ScheduledJobRegistry (jobs/monitor.py)
    scheduler = None if args.train_only else ScheduledRuns(connect(settings.redis_url), settings.validate_queue)
    if scheduler is not None:
        scheduler.start()
    record_hardware(connection, worker.name)  # for `GET /v1/admin/workers`; probed in a child process
    log.info("worker %s listening on %s (redis %s)", worker.name, ", ".join(names), redact_url(settings.redis_url))
    try:
        worker.work(burst=args.burst, logging_level="WARNING")
    finally:
        reconciler.stop()
        sweeps.stop()
        if scheduler is not None:
            scheduler.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
