"""One job on N processes: the work horse supervises N data-parallel ranks that torchrun starts (docs/scaling.md).

    horse (jobs/train.py, the job claimed, heartbeats on) -> supervise():
        torchrun --standalone --nproc_per_node N -m ftjobs.jobs.train <payload> <backend>
        (resources.nodes M > 1: a c10d rendezvous instead, and M-1 member nodes run the same: jobs/training/nodes.py)
            rank r (rank_main): the same train_job, under DDP (gloo on CPU, NCCL on GPU)
        -> every rank's last word in Redis (RankReports) -> rank 0's outcome -> the horse finishes the job as usual

Rank 0 reports (progress, events, metrics, checkpoints, artifacts); the other ranks write nothing to Redis or the
store but their last word (`RankReporter`, `ReadOnlyStorage`). No rank decides to stop on its own: cancel, pause
and preemption are the horse's, which stops the whole group (torchrun's SIGTERM to every rank; a rank outliving
torchrun gets its parent-death signal). A rank that dies ends the group (torchrun's own failure handling); the job
then fails with that rank's error, or, when a rank was killed without one, is left to the worker's recovery like a
lost work horse.
Steps between decisions must match on every rank, so ranks checkpoint by steps only (FTJOBS_CHECKPOINT_STEPS).
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from redis import Redis

from ftjobs.client.models import Artifact, JobCreate, JobError, JobStatus, Progress, QueuePayload
from ftjobs.client.models.resources import Resources
from ftjobs.core.keys import RANKS_TTL_S, checkpoint_pointer_path, ranks_key
from ftjobs.core.logs import setup_logging
from ftjobs.core.queue import connect
from ftjobs.core.settings import Settings
from ftjobs.core.storage import Storage
from ftjobs.jobs.errors import JobFailed
from ftjobs.jobs.interrupts import INTERRUPTER, Cancelled, Paused, Preempted
from ftjobs.jobs.outputs.results import EarlyStoppingOutcome, Results
from ftjobs.jobs.reconcile import recover
from ftjobs.jobs.report import Reporter, ServerPaths
from ftjobs.jobs.training import nodes

log = logging.getLogger("ftjobs.distributed")

POLL_S = 0.5  # seconds between the horse's looks at its ranks and at the record (cancel, pause)
STOP_GRACE_S = 20.0  # seconds torchrun gets to stop its ranks after SIGTERM before it is killed
PR_SET_PDEATHSIG = 1  # prctl(2)
SHARDING = "FTJOBS_SHARDING"  # a rank's environment: `resources.sharding` of its job

TrainJob = Callable[..., tuple[JobStatus, Results, list[Artifact] | None]]


class ResourcesUnavailable(JobFailed):
    """The worker cannot give the job the processes or GPUs it asked for."""

    code = "resources_unavailable"


class RankFailed(JobFailed):
    """A rank failed: its own error (code and message) becomes the job's."""

    def __init__(self, error: JobError) -> None:
        super().__init__(error.message, error.param)
        self.code = error.code


class ProcessLost(Preempted):
    """A rank was killed (no error of its own): the attempt ends unfinished and the worker recovers it."""


# ----------------------------------------------------------------------------- rank helpers


def world_size() -> int:
    """Processes training this job together (1 outside torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    """Whether this process reports the job (rank 0, or the only process)."""
    return rank() == 0


def processes(record: dict[str, Any]) -> int:
    """The processes a job's request asks for (1 for a record from before `resources`)."""
    return int(((record.get("request") or {}).get("resources") or {}).get("processes") or 1)


def nodes_of(record: dict[str, Any]) -> int:
    """The machines a job's request asks for (1 for a record from before `resources.nodes`)."""
    return int(((record.get("request") or {}).get("resources") or {}).get("nodes") or 1)


def sharded() -> bool:
    """Whether this rank trains under FSDP (the horse sets FTJOBS_SHARDING from `resources.sharding`)."""
    return os.environ.get(SHARDING) == "fsdp"


def rank_threads(total: int, n: int) -> int:
    """Each rank's torch threads: the worker's budget shared among the ranks, at least 1."""
    return max(1, total // n)


class RankReporter(Reporter):
    """A rank's reporter: rank 0 writes as any attempt does, the others nothing; no rank decides to stop (the
    horse stops them all: a rank that stopped alone would leave the others waiting in a collective)."""

    def __init__(self, redis: Any, p: QueuePayload, hidden: ServerPaths, writes: bool) -> None:
        super().__init__(redis, p.tenant, p.job_id, p.attempt, hidden)
        self.writes = writes

    def cancel_requested(self) -> bool:
        return False

    def pause_requested(self) -> bool:
        return False

    def step(self, progress: Progress, heartbeat: bool) -> bool:
        if self.writes:
            super().step(progress, heartbeat)
        return False

    def heartbeat(self) -> bool:
        return super().heartbeat() if self.writes else True

    def progress(self, progress: Progress) -> bool:
        return super().progress(progress) if self.writes else True

    def drop_metrics_after(self, step: int) -> int:
        return super().drop_metrics_after(step) if self.writes else 0

    def _write(self, fields: Any, entry: str = "", stream: str | None = None, statuses: Any = None,
               client: Any = None) -> bool:  # fmt: skip
        if not self.writes:
            return client is None
        return super()._write(fields, entry, stream, statuses, client)


class ReadOnlyStorage(Storage):
    """The store as ranks other than 0 see it: they read the job's inputs and checkpoints, and write nothing."""

    def write_bytes(self, rel: str, data: bytes) -> None:
        pass

    def write_json(self, rel: str, value: Any) -> None:
        pass

    def upload(self, local: Path, rel: str) -> None:
        pass

    def move(self, src: str, dst: str) -> None:
        pass

    def delete(self, rel: str) -> None:
        pass


# ----------------------------------------------------------------------------- the horse: launch and supervise


def supervise(
    p: QueuePayload, record: dict[str, Any], settings: Settings, store: Storage, reporter: Reporter, work: Path
) -> tuple[JobStatus, Results, list[Artifact] | None]:
    """Run the job on its ranks under torchrun and wait; returns rank 0's (status, results, artifacts) or raises
    what a single-process job would (Cancelled, Paused, Preempted, JobFailed)."""
    resources = JobCreate.model_validate(record["request"]).resources
    n, gpus = resources.processes, gpus_per_process(resources)
    m, queue = resources.nodes, (record.get("resolved") or {}).get("queue") or settings.queue
    reports = RankReports(reporter.redis, p)
    reports.clear()  # a word left by an earlier run of this same attempt is not this run's
    gang = nodes.Gang.open(reporter.redis, p, settings, m) if m > 1 else None
    command, env, threads, backend = launch(p, resources, gpus, gang.launch_args() if gang else ["--standalone"])
    where = f"{m} nodes x {n} processes" if gang else f"{n} processes"
    reporter.event(
        f"training on {where} ({resources.sharding.upper()}, {backend}), {threads} torch threads each",
        data={"processes": n, "nodes": m, "backend": backend, "threads_per_process": threads,
              "gpus_per_process": gpus, "sharding": resources.sharding,
              **({"rendezvous": gang.endpoint} if gang else {})},
    )  # fmt: skip
    group = subprocess.Popen(command, env=env, start_new_session=True, preexec_fn=die_with_parent)
    try:
        try:
            if gang is not None:  # after torchrun started: its agent hosts the c10d store the members connect to
                gang.enqueue_members(settings, queue)
            _wait(group, reporter, store, reports, n * m, gang)
        finally:
            stop_group(group)
            if gang is not None:
                gang.close(settings)
        return _outcome(reports, n * m, group.returncode, reporter, gang)
    except nodes.NodeLost as e:  # a member's worker stopped or vanished: a preemption, back to the front of its queue
        recover(reporter.redis, settings, p.tenant, p.job_id, p.attempt, str(e), free=not e.counted)
        raise


def launch(
    p: QueuePayload, resources: Resources, gpus: int, rendezvous: list[str]
) -> tuple[list[str], dict[str, str], int, str]:
    """torchrun's command and environment on one node (the horse's, or a member's: jobs/node.py), its ranks'
    torch threads and backend. `rendezvous`: `--standalone` on one node, the c10d arguments on several."""
    n = resources.processes
    threads = rank_threads(torch.get_num_threads(), n)
    backend = "nccl" if gpus else "gloo"
    command = [
        sys.executable, "-m", "torch.distributed.run", *rendezvous, f"--nproc_per_node={n}", "--max_restarts=0",
        "-m", "ftjobs.jobs.train", p.model_dump_json(), backend,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "FTJOBS_TORCH_THREADS": str(threads), "PYTHONUNBUFFERED": "1", SHARDING: resources.sharding}  # fmt: skip
    if not gpus:
        env["CUDA_VISIBLE_DEVICES"] = ""  # CPU ranks: gloo, and no rank grabs a GPU it was not given
        env["ACCELERATE_USE_CPU"] = "true"  # else the Trainer (accelerate) sees no distributed run on CPU
    return command, env, threads, backend


def gpus_per_process(resources: Resources) -> int:
    """0 or 1 GPU per rank; a job asking for more GPUs than the worker has fails before anything starts."""
    available = torch.cuda.device_count() if torch.cuda.is_available() else 0
    gpus = resources.gpus_per_process if resources.gpus_per_process is not None else min(available, 1)
    if gpus and resources.processes * gpus > available:
        raise ResourcesUnavailable(
            f"{resources.processes} processes with {gpus} GPU each need {resources.processes * gpus} GPUs; this "
            f"worker has {available}",
            param="resources.processes",
        )
    return gpus


def _wait(
    group: subprocess.Popen[bytes], reporter: Reporter, store: Storage, reports: RankReports, world: int,
    gang: nodes.Gang | None,
) -> None:  # fmt: skip
    """Until torchrun exits (on several nodes: and every rank has reported, or a grace has passed); a cancel or a
    pause on the record stops the group (preemption and RQ's timeout arrive as exceptions in this, the horse's
    main thread); a member node that failed, left or did not join in time ends the attempt (`Gang.check`)."""
    done_at: float | None = None  # when rank 0 reported or this node's torchrun exited
    while True:
        ended = group.poll() is not None
        if ended and (gang is None or reports.count() >= world or gang.members_ended()):
            return  # on several nodes: every rank's word is in, or no member runs ranks any more
        time.sleep(POLL_S)
        if reporter.cancel_requested():
            INTERRUPTER.acknowledge()  # stopping here: the heartbeat's forced interrupt must not land in the cleanup
            raise Cancelled()
        if reporter.pause_requested():
            INTERRUPTER.acknowledge()
            step = int(((reporter.read() or {}).get("progress") or {}).get("step") or 0)
            raise Paused(step, _checkpoint_step(store, reporter))
        if gang is not None and done_at is None:  # once rank 0 is through, the outcome speaks (_outcome)
            gang.check()
        if ended or reports.has(0):  # rank 0 is through: the others get a grace, then the group stops
            done_at = done_at or time.monotonic()
            if time.monotonic() - done_at > STOP_GRACE_S:
                return


def stop_group(group: subprocess.Popen[bytes]) -> None:
    """SIGTERM torchrun (it stops every rank), then SIGKILL what is left of its process group."""
    if group.poll() is None:
        os.killpg(group.pid, signal.SIGTERM)
        try:
            group.wait(STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            os.killpg(group.pid, signal.SIGKILL)  # ranks outliving torchrun get their parent-death signal
            group.wait()


def _outcome(
    reports: RankReports, n: int, code: int | None, reporter: Reporter, gang: nodes.Gang | None
) -> tuple[JobStatus, Results, list | None]:
    """Rank 0's outcome when every rank ended with a word; else the first error a rank wrote (the others' are
    mostly its echo: a peer gone); a rank that ended without one was killed: the attempt is lost (recovery).
    A member node that left or failed speaks first: its ranks' peers' errors are the echo of that."""
    words = reports.read()
    if gang is not None and (len(words) < n or any(word.get("error") for word in words.values())):
        gang.check()
    if len(words) < n:
        lost = sorted(set(range(n)) - set(words))
        reporter.event(f"training process (rank {', '.join(map(str, lost))}) lost; the worker recovers the job")
        raise ProcessLost(f"rank {lost[0]} ended without a word (torchrun exited with {code})")
    errors = sorted((word["at"], word["error"]) for word in words.values() if word.get("error"))
    if errors:
        raise RankFailed(JobError.model_validate(errors[0][1]))
    outcome = words[0]["outcome"]
    results = dict(outcome.get("results") or {})
    if results.get("early_stopping"):
        results["early_stopping"] = EarlyStoppingOutcome(**results["early_stopping"])
    artifacts = outcome.get("artifacts")
    parsed = [Artifact.model_validate(a) for a in artifacts] if artifacts is not None else None
    return JobStatus(outcome["status"]), Results(**results), parsed


def _checkpoint_step(store: Storage, reporter: Reporter) -> int:
    """The step of the job's newest committed checkpoint (0: none), where a resume continues."""
    try:
        with store.open(checkpoint_pointer_path(reporter.tenant, reporter.job_id)) as fh:
            return int(json.load(fh).get("step") or 0)
    except Exception:  # no checkpoint yet (or unreadable): a resume starts over
        return 0


def die_with_parent() -> None:
    """In torchrun (and in each rank): SIGKILL when the parent dies, so a killed horse leaves no orphan."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


# ----------------------------------------------------------------------------- a rank


def rank_main(argv: list[str], train_job: TrainJob, job_error: Callable[[Exception], JobError]) -> int:
    """One rank under torchrun: argv = payload JSON, backend. Runs train_job; rank 0 reports the outcome the horse
    finishes the job with, a rank that fails its error (to Redis: the rank may run on another node)."""
    die_with_parent()  # torchrun is the parent: its death (SIGKILL included) ends this rank
    p, backend = QueuePayload.model_validate_json(argv[0]), argv[1]
    settings = Settings.from_env()
    settings = settings.model_copy(update={"checkpoint_s": 0.0})  # by steps only: every rank decides alike
    setup_logging(f"rank{rank()}", settings)
    main = is_main()
    redis = connect(settings.redis_url)
    reports = RankReports(redis, p)
    store = Storage(settings.storage_url) if main else ReadOnlyStorage(settings.storage_url)
    try:
        torch.set_num_threads(settings.torch_threads or 1)
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        torch.distributed.init_process_group(backend)  # the Trainer (accelerate) uses this group
        with tempfile.TemporaryDirectory(prefix=f"ftjobs-rank{rank()}-") as tmp:
            reporter = RankReporter(redis, p, ServerPaths.for_settings(settings, [Path(tmp)]), writes=main)
            record = reporter.read()
            if record is None:
                raise Cancelled()
            if not main:  # what only rank 0 does: generations and samples, trackers' runs
                record["request"] = {**record["request"], "eval_generation_limit": 0, "eval_samples": 0,
                                     "integrations": []}  # fmt: skip
            if sharded():  # generating on rank 0 alone would wait for the others' shards: no generation eval
                record["request"] = {**record["request"], "eval_generation_limit": 0, "eval_samples": 0}
            status, results, artifacts = train_job(record, settings, store, reporter, Path(tmp))
            listed = [a.model_dump() for a in artifacts] if artifacts is not None else None
            outcome = {"status": status.value, "results": results.as_json(), "artifacts": listed}
        reports.write(rank(), {"at": time.time(), "outcome": outcome if main else None})
        return 0
    except Cancelled:
        reports.write(rank(), {"at": time.time(), "outcome": {"status": JobStatus.cancelled.value}})
        return 0
    except Exception as e:
        reports.write(rank(), {"at": time.time(), "error": job_error(e).model_dump()})
        return 1  # torchrun then stops the other ranks
    finally:
        redis.close()
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


class RankReports:
    """An attempt's ranks' last words in Redis (core/keys.ranks_key): written by each rank wherever it runs, read
    by the attempt's horse. One HSET per word: the horse never reads half of one."""

    def __init__(self, redis: Redis, p: QueuePayload) -> None:
        self.redis, self.key = redis, ranks_key(p.tenant, p.job_id, p.attempt)

    def write(self, global_rank: int, word: dict[str, Any]) -> None:
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(self.key, str(global_rank), json.dumps(word))
        pipe.expire(self.key, RANKS_TTL_S)
        pipe.execute()

    def read(self) -> dict[int, dict[str, Any]]:
        return {int(r): json.loads(v) for r, v in self.redis.hgetall(self.key).items()}

    def has(self, global_rank: int) -> bool:
        return bool(self.redis.hexists(self.key, str(global_rank)))

    def count(self) -> int:
        return int(self.redis.hlen(self.key))

    def clear(self) -> None:
        self.redis.delete(self.key)
