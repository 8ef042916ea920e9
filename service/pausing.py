"""Pause and resume on the API side: the transitions a caller asks for, through GUARDED_WRITE (service/store.py).

Shared by the native routes (`POST /v1/jobs/{id}/pause|resume`) and the OpenAI-compatible ones.

pause_job:
- validating_files or queued: `paused` at once; its RQ job leaves its tenant's line and RQ (`JobQueue.cancel`). A
  validation already running sees its status move within a second and stops; nothing it found is kept.
- running: `pause_requested`; the worker checkpoints at the next step end, gives back the worker and the tenant's
  running slot and moves the job to `paused` itself (jobs/train.py). Until then the job stays `running`. A pause
  asked for once training is over (final evaluation, saving) is moot: the job finishes.
- paused, or a pause already asked for: the job as it is (idempotent, 200).
- finished, or a cancel under way: JobNotPausable (409).

resume_job (a `paused` job only; anything else is JobNotPaused, 409, a retried resume included: the job's status
says where it is):
- paused before training (while validating_files, attempt 0): validating_files again, as a new validation run;
- otherwise queued as the next attempt, not counted against max_attempts (a pause is like a preemption), in its
  tenant's line by priority and submission order (not at the front: a resume is a new request). The attempt
  continues from the job's checkpoint (jobs/training/checkpoints.py).

A paused job holds no lease, no RQ job and no running slot; it counts against `max_active_jobs`; the reconciler
leaves it alone; `cancel` ends it at once (service/store.py) and its checkpoints are deleted.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from ftjobs.client.models import Job, JobError, JobStatus
from ftjobs.core import keys
from ftjobs.core.keys import JobField
from ftjobs.core.queue import JobQueue
from ftjobs.core.records import event_entry, status_entry
from ftjobs.service.errors import JobNotPausable, JobNotPaused
from ftjobs.service.store import Store

log = logging.getLogger("ftjobs.service")
S = JobStatus
NOT_STARTED = (S.validating_files, S.queued)  # paused at once


def pause_job(store: Store, queue: JobQueue, tenant: str, job_id: str) -> Job:
    """Pause a job (see the module); -> the job, `paused` or (running) with `pause_requested`."""
    store.require_job(tenant, job_id)
    for _ in range(5):  # the status may move under us (queued -> running); each retry re-reads it
        job = store.get_job(tenant, job_id)
        if job.status == S.paused or (job.status == S.running and job.pause_requested):
            return job
        if job.status.is_terminal:
            raise JobNotPausable(f"Job {job_id} is already {job.status}; it cannot be paused.")
        if job.cancel_requested:
            raise JobNotPausable(f"Job {job_id} is being cancelled; it cannot be paused.")
        if job.status in NOT_STARTED:
            where = "before its files were validated" if job.attempt == 0 else "while queued"
            written, _ = store.guarded_write(
                tenant,
                job_id,
                statuses=[job.status],
                attempt=job.attempt,
                fields={JobField.status: S.paused.value, JobField.pause_requested: False},
                entry=status_entry(S.paused, f"Job paused {where}.", attempt=job.attempt, previous=job.status.value),
            )
            if written:
                queue.cancel(job_id, job.attempt, run=_validation_run(store, tenant, job_id))
                return store.get_job(tenant, job_id)
            continue
        written, _ = store.guarded_write(
            tenant,
            job_id,
            statuses=[S.running],
            attempt=job.attempt,
            fields={JobField.pause_requested: True},
            entry=event_entry("Pause requested; the job checkpoints at its next training step and is paused."),
        )
        if written:
            return store.get_job(tenant, job_id)
    return store.get_job(tenant, job_id)


def resume_job(store: Store, queue: JobQueue, tenant: str, job_id: str) -> Job:
    """Resume a paused job (see the module); -> the job, validating_files or queued."""
    job = store.get_job(tenant, job_id)
    if job.status != S.paused:
        raise JobNotPaused(f"Job {job_id} is {job.status}, not paused; only a paused job can be resumed.")
    resolved = _resolved(store, tenant, job_id)
    run, attempt = _validation_run(store, tenant, job_id) + 1, job.attempt + 1
    fields: dict[str, Any]
    if job.attempt == 0:
        fields = {JobField.status: S.validating_files.value, JobField.resolved: {**resolved, "validation_runs": run}}
        entry = status_entry(S.validating_files, "Job resumed; validating files again.", attempt=0, run=run)
    else:
        free = int(resolved.get("free_attempts") or 0) + 1
        fields = {
            JobField.status: S.queued.value,
            JobField.attempt: attempt,
            JobField.pause_requested: False,
            JobField.resolved: {**resolved, "free_attempts": free},
        }
        message = f"Job resumed; queued as attempt {attempt} (not counted against the attempt limit)"
        entry = status_entry(S.queued, message, attempt=attempt, previous_attempt=job.attempt, counted=False)
    written, status = store.guarded_write(
        tenant, job_id, statuses=[S.paused], attempt=job.attempt, fields=fields, entry=entry
    )
    if not written:  # resumed or cancelled by a request beside ours
        raise JobNotPaused(f"Job {job_id} is {status or 'gone'}, not paused; only a paused job can be resumed.")
    try:
        if job.attempt == 0:
            queue.enqueue_validation(tenant, job_id, queue=resolved.get("queue"), run=run)
        else:
            queue.enqueue_attempt(tenant, job_id, attempt, queue=resolved.get("queue"))
    except Exception:
        try:
            store.mark_failed(tenant, job_id, JobError(code="internal_error", message="The job could not be queued."))
        except Exception:
            log.exception("could not mark %s failed after an enqueue error", job_id)
        raise
    return store.get_job(tenant, job_id)


def _resolved(store: Store, tenant: str, job_id: str) -> dict[str, Any]:
    """The record's `resolved` as stored (the Job view may show it shaped for the tenant)."""
    raw = store.redis.hget(keys.job_key(tenant, job_id), JobField.resolved)
    return dict(json.loads(raw)) if raw else {}


def _validation_run(store: Store, tenant: str, job_id: str) -> int:
    """Which validation run of the job is the current one (its RQ id: core/queue.rq_job_id)."""
    resolved = _resolved(store, tenant, job_id)
    return int(resolved.get("validation_runs") or resolved.get("validation_attempts") or 1)
