"""Every accepted job reaches a terminal status without a person: leases, recovery and the reconciler.

Ownership of a job between "enqueued" and "finished" never lives only in RQ:
- the lease: the attempt's member in HEARTBEATS_KEY, written by the worker process the moment it takes the RQ job
  (before the work horse imports anything) and renewed by the worker and the horse while it runs;
- `recover()`: the one way a job whose attempt died goes on: a new validation, or the next training attempt (which
  resumes from the job's checkpoint), or `worker_lost` once `max_attempts` crashes are spent; with an event saying
  why. A preemption (`free=True`: the worker was asked to stop) is not counted and goes to the front of the queue;
  a job asked to pause (`pause_requested`) whose attempt died is paused instead (a resume continues from its last
  checkpoint), and a cancel asked for wins over both;
- `Reconciler`: a thread in every worker (safe to run in any number of processes at once: every transition is a
  guarded write at the attempt it found, so only one of them wins) that finds what died without anyone noticing:
  leases gone stale (a worker killed with its horse, a machine lost) and jobs in validating_files / queued /
  running with neither a live lease nor a waiting RQ job (a horse killed between RQ's dequeue and the job's first
  write, an RQ job lost with Redis). A job held by a live lease is never touched, so nothing runs to success twice.
  It also repairs the fair admission (core/admission.py): an entry waiting or running in a tenant's line whose job
  is neither in RQ nor leased any more is freed, and every line with pending jobs is admitted again, so a crash
  between two steps never leaves a tenant's jobs pending with nothing of theirs in RQ. A `paused` job is left alone
  (it waits for a person, with no lease and no RQ job on purpose); a job the API ended (cancelled while queued or
  paused) loses its checkpoints when the sweep drops it from the active set.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from typing import Any, cast

from redis import Redis

from ftjobs.client.models import TERMINAL_STATUSES, EventLevel, JobError, JobStatus
from ftjobs.core.admission import Line
from ftjobs.core.keys import (
    ACTIVE_BACKFILLED_KEY,
    ACTIVE_JOBS_KEY,
    HEARTBEATS_KEY,
    JobField,
    active_member,
    heartbeat_member,
    job_key,
    parse_heartbeat_member,
    recovery_claim_key,
    suspect_key,
    tenant_jobs_key,
)
from ftjobs.core.queue import JobQueue, rq_job_id
from ftjobs.core.records import as_text
from ftjobs.core.retention import Retention
from ftjobs.core.settings import Settings
from ftjobs.core.storage import Storage, remove_checkpoints
from ftjobs.jobs.report import Reporter

log = logging.getLogger("ftjobs.reconcile")

CLAIM_TTL_S = 24 * 3600


# ----------------------------------------------------------------------------- recovery


def recover(
    redis: Redis,
    settings: Settings,
    tenant: str,
    job_id: str,
    attempt: int,
    reason: str,
    *,
    free: bool = False,
) -> str:
    """Move on a job whose `attempt` stopped without finishing it; returns what was done ("" = nothing: the job
    has moved on, or another process did it first). `free`: a preemption, not counted, to the front of the queue."""
    reporter = Reporter(redis, tenant, job_id, attempt)
    record = reporter.read()
    if not record or record.get(JobField.attempt) != attempt:
        return ""
    status = record.get(JobField.status)
    if attempt == 0:
        return _validate_again(redis, settings, reporter, record, reason, free) if status == "validating_files" else ""
    if status not in (JobStatus.queued, JobStatus.running):
        return ""
    alive = [JobStatus.queued, JobStatus.running]
    storage = Storage(settings.storage_url)
    if record.get(JobField.cancel_requested):  # the user wanted it stopped anyway: no new attempt
        if reporter.finish(JobStatus.cancelled, statuses=alive):
            remove_checkpoints(storage, tenant, job_id)
            return "cancelled"
        return ""
    if record.get(JobField.pause_requested):  # the user wanted it paused anyway: it waits for a resume
        if reporter.pause(f"{reason}; paused as asked (a resume continues from its last checkpoint)", statuses=alive):
            log.warning("%s attempt %d: %s; paused as asked", job_id, attempt, reason)
            return "paused"
        return ""
    resolved = record.get(JobField.resolved) or {}
    spent = attempt - int(resolved.get("free_attempts") or 0)  # crashes so far, this one included
    if free or spent < settings.max_attempts:
        if not reporter.requeue(reason, free=free):
            return ""
        queue = resolved.get("queue") or settings.queue  # the queue it ran on keeps its hardware class
        JobQueue(redis, settings).enqueue_attempt(tenant, job_id, attempt + 1, queue=queue, at_front=free)
        log.warning("%s attempt %d: %s; requeued as attempt %d", job_id, attempt, reason, attempt + 1)
        return "requeued"
    message = f"{reason} on attempt {attempt}; no attempts left (max {settings.max_attempts})"
    if reporter.finish(JobStatus.failed, error=JobError(code="worker_lost", message=message), statuses=alive):
        log.warning("%s attempt %d: %s; no attempts left, failed", job_id, attempt, reason)
        remove_checkpoints(storage, tenant, job_id)
        return "failed"
    return ""


def _validate_again(
    redis: Redis, settings: Settings, reporter: Reporter, record: dict[str, Any], reason: str, free: bool
) -> str:
    """A lost file validation runs again (it is cheap and repeatable), up to max_attempts crashes."""
    resolved = record.get(JobField.resolved) or {}
    tries = int(resolved.get("validation_attempts") or 1)  # crashed validations count, preempted ones do not
    runs = int(resolved.get("validation_runs") or tries)  # every validation enqueued: the next RQ id
    if not redis.set(recovery_claim_key(reporter.tenant, reporter.job_id, runs), "1", nx=True, ex=CLAIM_TTL_S):
        return ""  # another process is recovering this same validation run
    if not free and tries >= settings.max_attempts:
        message = f"{reason} while validating files, {tries} times; no attempts left"
        reporter.finish(JobStatus.failed, error=JobError(code="worker_lost", message=message))
        log.warning("%s: validation lost %d times, failed", reporter.job_id, tries)
        return "failed"
    update = {"validation_runs": runs + 1, "validation_attempts": tries + (0 if free else 1)}
    if not reporter.resolved(update):
        return ""
    again = "validating again (first in line)" if free else "validating again"
    reporter.event(f"{reason} while validating files; {again}", level=EventLevel.warning)
    queue = resolved.get("queue") or settings.queue
    JobQueue(redis, settings).enqueue_validation(
        reporter.tenant, reporter.job_id, queue=queue, run=runs + 1, at_front=free
    )
    log.warning("%s: validation %s; enqueued again", reporter.job_id, reason)
    return "validating_again"


# ----------------------------------------------------------------------------- the reconciler


class Reconciler(threading.Thread):
    """Sweeps every `stale_after_s / 4` seconds: stale leases, then every active job against RQ (see the module)."""

    def __init__(self, redis: Redis, settings: Settings) -> None:
        super().__init__(name="ftjobs-reconciler", daemon=True)
        self.redis = redis
        self.settings = settings
        self.queue = JobQueue(redis, settings)
        self.storage = Storage(settings.storage_url)
        self.retention = Retention(redis, self.storage, settings.retention_s)  # finished jobs' streams -> store
        self.interval_s = max(0.2, settings.stale_after_s / 4)
        self._stop_event = threading.Event()

    def run(self) -> None:
        try:
            self.backfill_active()
        except Exception:
            log.warning("could not backfill the active jobs", exc_info=True)
        while True:
            try:
                self.sweep()
            except Exception:  # a Redis blip must not kill the thread; the next sweep retries
                log.warning("reconciler sweep failed", exc_info=True)
            try:
                self.retention.backfill()  # once per deployment (a marker key), then a no-op
                self.retention.sweep()  # one worker at a time (a lock), a few seconds at most
            except Exception:
                log.warning("retention sweep failed", exc_info=True)
            if self._stop_event.wait(self.interval_s):
                return

    def stop(self) -> None:
        self._stop_event.set()

    def backfill_active(self) -> int:
        """Once per deployment: put the unfinished jobs created before ACTIVE_JOBS_KEY existed into it."""
        if not self.redis.set(ACTIVE_BACKFILLED_KEY, json.dumps(time.time()), nx=True):
            return 0
        added = 0
        for index in self.redis.scan_iter(match=tenant_jobs_key("*"), _type="ZSET"):
            tenant = as_text(index).split(":")[2]
            job_ids = [as_text(i) for i in cast(list[bytes], self.redis.zrange(index, 0, -1))]
            pipe = self.redis.pipeline(transaction=False)
            for job_id in job_ids:
                pipe.hget(job_key(tenant, job_id), JobField.status)
            for job_id, status in zip(job_ids, pipe.execute(), strict=True):
                if status is not None and json.loads(status) not in TERMINAL_STATUSES:
                    added += self.redis.sadd(ACTIVE_JOBS_KEY, active_member(tenant, job_id))
        return added

    def sweep(self, now: float | None = None) -> int:
        """One pass; returns how many jobs it moved on."""
        now = time.time() if now is None else now
        if self._redis_just_restarted():
            return 0  # nobody could beat while Redis was down: every lease looks stale, none is known dead
        return self.sweep_leases(now) + self.sweep_active(now) + self.sweep_admission(now)

    def sweep_leases(self, now: float) -> int:
        """Leases older than stale_after_s: their worker is gone (with its horse: PR_SET_PDEATHSIG)."""
        cutoff = now - self.settings.stale_after_s
        members: list[bytes] = self.redis.zrangebyscore(HEARTBEATS_KEY, "-inf", cutoff)  # type: ignore[assignment]
        moved = 0
        for raw in members:
            score = self.redis.zscore(HEARTBEATS_KEY, raw)
            if score is None or score > cutoff:
                continue  # it beat again since we looked, or another reconciler took it
            member = as_text(raw)
            try:
                tenant, job_id, attempt = parse_heartbeat_member(member)
                reason = f"worker lost (no heartbeat for {now - score:.0f} s)"
                moved += bool(recover(self.redis, self.settings, tenant, job_id, attempt, reason))
            finally:
                self.redis.zrem(HEARTBEATS_KEY, raw)
        return moved

    def sweep_active(self, now: float) -> int:
        """Jobs not finished with neither a live lease nor a waiting RQ job, for longer than stale_after_s."""
        moved = 0
        for raw in self.redis.smembers(ACTIVE_JOBS_KEY):
            member = as_text(raw)
            tenant, _, job_id = member.partition("|")
            try:
                moved += self._check(tenant, job_id, now)
            except Exception:
                log.warning("reconciling %s failed", job_id, exc_info=True)
        return moved

    def sweep_admission(self, now: float) -> int:
        """Free line entries (waiting in RQ, or a running slot) whose job is gone, then admit every line again;
        returns how many jobs were admitted. Entries younger than stale_after_s are left alone."""
        admission = self.queue.admission
        cutoff = now - self.settings.stale_after_s
        tenants_done: set[str] = set()
        admitted = 0
        for line in admission.lines():
            gone = [rq_id for rq_id, since in admission.waiting(line).items() if since < cutoff]
            if line.training and line.tenant not in tenants_done:
                tenants_done.add(line.tenant)
                gone += [rq_id for rq_id, since in admission.slots(line.tenant).items() if since < cutoff]
            for rq_id in dict.fromkeys(gone):
                if not self._in_flight(line, rq_id, cutoff):
                    log.warning("admission: %s of tenant %s is neither in RQ nor running; freed", rq_id, line.tenant)
                    admitted += len(admission.release(line, rq_id))  # which admits what now fits
            admitted += len(admission.admit(line))
        return admitted

    def _in_flight(self, line: Line, rq_id: str, cutoff: float) -> bool:
        """Waiting in RQ or its line, or leased by a live worker."""
        job_id, attempt = _parse_rq_id(rq_id)
        score = self.redis.zscore(HEARTBEATS_KEY, heartbeat_member(line.tenant, job_id, attempt))
        return (score is not None and score > cutoff) or self.queue.state(rq_id) in ("waiting", "pending")

    def _check(self, tenant: str, job_id: str, now: float) -> int:
        record = Reporter(self.redis, tenant, job_id, 0).read()
        status = (record or {}).get(JobField.status)
        if not record or status in TERMINAL_STATUSES:
            if self.redis.srem(ACTIVE_JOBS_KEY, active_member(tenant, job_id)) and record:
                remove_checkpoints(self.storage, tenant, job_id)  # ended by the API: a paused or preempted job's
            return 0
        if status not in (JobStatus.validating_files, JobStatus.queued, JobStatus.running):
            return 0  # e.g. paused: waits for a person, with no lease and no RQ job on purpose
        attempt = int(record.get(JobField.attempt) or 0)
        suspect = suspect_key(tenant, job_id, attempt, status)
        score = self.redis.zscore(HEARTBEATS_KEY, heartbeat_member(tenant, job_id, attempt))
        if score is not None and score > now - self.settings.stale_after_s:
            self.redis.delete(suspect)
            return 0  # a live lease: somebody is on it
        resolved = record.get(JobField.resolved) or {}
        run = int(resolved.get("validation_runs") or resolved.get("validation_attempts") or 1)  # attempt 0 only
        rq_id = rq_job_id(job_id, attempt, run)
        state = self.queue.state(rq_id)
        if state in ("waiting", "pending"):  # pending: in its tenant's line, admitted into RQ in turn
            self.redis.delete(suspect)
            return 0
        # Seen without a lease or a waiting RQ job: act only if that lasts (an enqueue may be a moment behind).
        self.redis.set(suspect, json.dumps(now), nx=True, ex=CLAIM_TTL_S)
        first = float(json.loads(self.redis.get(suspect) or json.dumps(now)))
        if now - first < self.settings.stale_after_s:
            return 0
        self.redis.delete(suspect)
        where = "while validating files" if attempt == 0 else f"attempt {attempt} ({status})"
        reason = f"RQ job {rq_id} is {state} with no live worker {where}"
        return bool(recover(self.redis, self.settings, tenant, job_id, attempt, reason))

    def _redis_just_restarted(self) -> bool:
        uptime = float(self.redis.info("server").get("uptime_in_seconds", 1e9))
        return uptime < self.settings.stale_after_s + self.settings.heartbeat_s


def _parse_rq_id(rq_id: str) -> tuple[str, int]:
    """(job id, attempt) of an RQ id from `rq_job_id` (`<job>-<attempt>`, `<job>-0-<run>`)."""
    if m := re.fullmatch(r"(.+)-0-\d+", rq_id):
        return m.group(1), 0
    job_id, _, attempt = rq_id.rpartition("-")
    return job_id, int(attempt) if attempt.isdigit() else 0
