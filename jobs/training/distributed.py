"""One job on N processes: the work horse supervises N data-parallel ranks that torchrun starts (docs/scaling.md).

    horse (jobs/train.py, the job claimed, heartbeats on) -> supervise():
        torchrun --standalone --nproc_per_node N -m ftjobs.jobs.train <payload> <outcome folder>
            rank r (rank_main): the same train_job, under DDP (gloo on CPU, NCCL on GPU)
        -> rank 0's outcome (status, results, artifacts, error) -> the horse finishes the job as usual

Rank 0 reports (progress, events, metrics, checkpoints, artifacts); the other ranks write nothing to Redis or the
store (`RankReporter`, `ReadOnlyStorage`). No rank decides to stop on its own: cancel, pause and preemption are the
horse's, which stops the whole group (torchrun's SIGTERM to every rank; a rank outliving torchrun gets its parent-
death signal). A rank that dies ends the group (torchrun's own failure handling); the job then fails with that
rank's error, or, when a rank was killed without one, is left to the worker's recovery like a lost work horse.
Steps between decisions must match on every rank, so ranks checkpoint by steps only (FTJOBS_CHECKPOINT_STEPS).
"""

from __future__ import annotations

import ctypes
import functools
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

from ftjobs.client.models import Artifact, JobCreate, JobError, JobStatus, Progress, QueuePayload
from ftjobs.client.models.resources import Resources
from ftjobs.core.keys import checkpoint_pointer_path
from ftjobs.core.logs import setup_logging
from ftjobs.core.queue import connect
from ftjobs.core.settings import Settings
from ftjobs.core.storage import Storage
from ftjobs.jobs.errors import JobFailed
from ftjobs.jobs.interrupts import INTERRUPTER, Cancelled, Paused, Preempted
from ftjobs.jobs.outputs.results import EarlyStoppingOutcome, Results
from ftjobs.jobs.report import Reporter, ServerPaths

log = logging.getLogger("ftjobs.distributed")

POLL_S = 0.5  # seconds between the horse's looks at its ranks and at the record (cancel, pause)
STOP_GRACE_S = 20.0  # seconds torchrun gets to stop its ranks after SIGTERM before it is killed
REPORT = "rank-{}.json"  # each rank's last word: rank 0's outcome, a rank's error, or that it ended well
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


def sharded() -> bool:
    """Whether this rank trains under FSDP (the horse sets FTJOBS_SHARDING from `resources.sharding`)."""
    return os.environ.get(SHARDING) == "fsdp"


def sharding_arguments() -> dict[str, Any]:
    """The Trainer's FSDP arguments on an FSDP rank ({} otherwise): FSDP2 (accelerate's `fully_shard`), each
    decoder layer its own unit, parameters resharded after the forward, a full state dict for checkpoints."""
    if not sharded():
        return {}
    config = {"version": 2, "auto_wrap_policy": "TRANSFORMER_BASED_WRAP", "reshard_after_forward": True,
              "state_dict_type": "FULL_STATE_DICT"}  # fmt: skip
    return {"fsdp": True, "fsdp_config": config}


def gather_weights(trainer: Any) -> None:
    """On FSDP ranks, before rank 0 alone saves: every rank takes part in gathering the full state dict (a
    collective), and rank 0's model then saves that one (its own parameters are shards). A no-op under DDP."""
    if not sharded():
        return
    state = trainer.accelerator.get_state_dict(trainer.model)  # full, on CPU, on rank 0
    if is_main():
        model = trainer.accelerator.unwrap_model(trainer.model)
        model.save_pretrained = functools.partial(model.save_pretrained, state_dict=state)


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
    if resources.sharding == "fsdp" and not gpus:  # accelerate shards only on GPU ranks (docs/scaling.md)
        raise ResourcesUnavailable(
            "sharding fsdp needs a GPU per process; this worker's ranks would run on CPU, where accelerate trains "
            "them as DDP (unsharded). Use sharding ddp, or hardware whose workers have GPUs.",
            param="resources.sharding",
        )
    threads = rank_threads(torch.get_num_threads(), n)
    backend = "nccl" if gpus else "gloo"
    outcomes = work / "ranks"
    outcomes.mkdir()
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}", "--max_restarts=0",
        "-m", "ftjobs.jobs.train", p.model_dump_json(), str(outcomes), backend,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "FTJOBS_TORCH_THREADS": str(threads), "PYTHONUNBUFFERED": "1", SHARDING: resources.sharding}  # fmt: skip
    if not gpus:
        env["CUDA_VISIBLE_DEVICES"] = ""  # CPU ranks: gloo, and no rank grabs a GPU it was not given
        env["ACCELERATE_USE_CPU"] = "true"  # else the Trainer (accelerate) sees no distributed run on CPU
    reporter.event(
        f"training on {n} processes ({resources.sharding.upper()}, {backend}), {threads} torch threads each",
        data={"processes": n, "backend": backend, "threads_per_process": threads, "gpus_per_process": gpus,
              "sharding": resources.sharding},
    )  # fmt: skip
    group = subprocess.Popen(command, env=env, start_new_session=True, preexec_fn=_die_with_parent)
    try:
        _wait(group, reporter, store, outcomes)
    finally:
        stop_group(group)
    return _outcome(outcomes, n, group.returncode, reporter)


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


def _wait(group: subprocess.Popen[bytes], reporter: Reporter, store: Storage, outcomes: Path) -> None:
    """Until torchrun exits; a cancel or a pause on the record stops the group (preemption and RQ's timeout
    arrive as exceptions in this, the horse's main thread)."""
    done_at: float | None = None
    while group.poll() is None:
        time.sleep(POLL_S)
        if reporter.cancel_requested():
            INTERRUPTER.acknowledge()  # stopping here: the heartbeat's forced interrupt must not land in the cleanup
            raise Cancelled()
        if reporter.pause_requested():
            INTERRUPTER.acknowledge()
            step = int(((reporter.read() or {}).get("progress") or {}).get("step") or 0)
            raise Paused(step, _checkpoint_step(store, reporter))
        if (outcomes / REPORT.format(0)).exists():  # rank 0 is through: the others get a grace, then the group stops
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


def _outcome(outcomes: Path, n: int, code: int | None, reporter: Reporter) -> tuple[JobStatus, Results, list | None]:
    """Rank 0's outcome when every rank ended with a word; else the first error a rank wrote (the others' are
    mostly its echo: a peer gone); a rank that ended without one was killed: the attempt is lost (recovery)."""
    reports = {r: json.loads(f.read_text()) for r in range(n) if (f := outcomes / REPORT.format(r)).exists()}
    if len(reports) < n:
        lost = sorted(set(range(n)) - set(reports))
        reporter.event(f"training process (rank {', '.join(map(str, lost))}) lost; the worker recovers the job")
        raise ProcessLost(f"rank {lost[0]} ended without a word (torchrun exited with {code})")
    errors = sorted((report["at"], report["error"]) for report in reports.values() if report.get("error"))
    if errors:
        raise RankFailed(JobError.model_validate(errors[0][1]))
    outcome = reports[0]["outcome"]
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


def _die_with_parent() -> None:
    """In torchrun (and in each rank): SIGKILL when the parent dies, so a killed horse leaves no orphan."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


# ----------------------------------------------------------------------------- a rank


def rank_main(argv: list[str], train_job: TrainJob, job_error: Callable[[Exception], JobError]) -> int:
    """One rank under torchrun: argv = payload JSON, outcome folder, backend. Runs train_job; rank 0 writes the
    outcome the horse finishes the job with, a rank that fails writes its error."""
    _die_with_parent()  # torchrun is the parent: its death (SIGKILL included) ends this rank
    p, outcomes, backend = QueuePayload.model_validate_json(argv[0]), Path(argv[1]), argv[2]
    settings = Settings.from_env()
    settings = settings.model_copy(update={"checkpoint_s": 0.0})  # by steps only: every rank decides alike
    setup_logging(f"rank{rank()}", settings)
    main, report = is_main(), outcomes / REPORT.format(rank())
    redis = connect(settings.redis_url)
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
        _write(report, {"at": time.time(), "outcome": outcome if main else None})
        return 0
    except Cancelled:
        _write(report, {"at": time.time(), "outcome": {"status": JobStatus.cancelled.value}})
        return 0
    except Exception as e:
        _write(report, {"at": time.time(), "error": job_error(e).model_dump()})
        return 1  # torchrun then stops the other ranks
    finally:
        redis.close()
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _write(path: Path, value: Any) -> None:
    """Atomically: the horse never reads half an outcome."""
    part = path.with_suffix(".part")
    part.write_text(json.dumps(value))
    part.replace(path)
