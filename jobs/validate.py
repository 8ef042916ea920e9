"""The `validating_files` phase of a job, on a worker: the checks that need the model's tokenizer.

    run(payload) -> take the job (validating_files, attempt 0) -> fetch the files -> the job's data
    preparation (without model-based augmentation; its first half is saved for the training run to reuse)
    -> tokenize with the base model's tokenizer ->
    token lengths, truncation at max_seq_length, too few examples -> queued (attempt 1, enqueued on the
    job's training queue) or failed with the reason.

No model weights are loaded here: a job that cannot train fails before it takes a training worker (or an
accelerator). The API enqueues this on the validation queue (FTJOBS_VALIDATE_QUEUE), which every worker
serves before its training queue, so a job is checked within seconds even while its queue is busy.
The token statistics also go next to the training file in the store: its profile shows them.
"""

from __future__ import annotations

import os
import socket
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

from redis import Redis
from rq import get_current_job
from transformers import AutoTokenizer

from ftjobs.client.models import EventLevel, JobCreate, JobError, JobStatus, QueuePayload, Task
from ftjobs.core.keys import file_tokens_dir
from ftjobs.core.queue import JobQueue, connect
from ftjobs.core.settings import Settings
from ftjobs.core.storage import Storage
from ftjobs.jobs.data import label_issues
from ftjobs.jobs.data.augment import augment_model_path
from ftjobs.jobs.data.examples import build_datasets
from ftjobs.jobs.data.inputs import fetch_rows, hyperparameters, load, resolve_model_path, short
from ftjobs.jobs.data.prepare import (
    MODEL_AUGMENT,
    discard_first_half,
    prepare_job_data,
    step_messages,
    token_report,
)
from ftjobs.jobs.errors import JobFailed
from ftjobs.jobs.interrupts import INTERRUPTER, Cancelled, Preempted
from ftjobs.jobs.report import Heartbeat, Reporter, ServerPaths

TOKEN_PROFILES_KEPT = 5  # token statistics kept per file (newest jobs)


def run(payload: dict[str, Any]) -> dict[str, Any]:
    """RQ job function for attempt 0; returns a small summary, never raises for a job's bad files."""
    p = QueuePayload.model_validate(payload)
    settings = Settings.from_env()
    redis = connect(settings.redis_url)
    try:
        return _validate(p, settings, redis)
    finally:
        INTERRUPTER.disarm()
        redis.close()


def _validate(p: QueuePayload, settings: Settings, redis: Redis) -> dict[str, Any]:
    summary: dict[str, Any] = {"job_id": p.job_id, "tenant": p.tenant, "attempt": 0}
    reporter = Reporter(redis, p.tenant, p.job_id, 0, ServerPaths.for_settings(settings))
    record = reporter.read()
    if record is None:
        return {**summary, "status": "missing"}
    rq_job = get_current_job()
    worker_name = (rq_job.worker_name if rq_job else None) or f"{socket.gethostname()}.{os.getpid()}"
    if not reporter.begin_validation(worker_name):
        return {**summary, "status": "skipped"}  # cancelled, or already validated

    error: JobError | None = None
    started = time.monotonic()
    stop = Heartbeat(reporter, settings.heartbeat_s, on_stop=lambda: INTERRUPTER.request(Cancelled, 0))
    store = Storage(settings.storage_url)
    with stop, tempfile.TemporaryDirectory(prefix="ftjobs-validate-") as tmp:
        try:
            checked = check_files(record, settings, store, reporter, Path(tmp))
        except (Cancelled, Preempted) as e:  # cancelled: nothing to write; preempted: the worker re-enqueues it
            if isinstance(e, Cancelled):
                discard_first_half(store, p.tenant, p.job_id)
            return {**summary, "status": type(e).__name__.lower()}
        except JobFailed as e:
            error = e.to_error()
        except Exception as e:  # our fault: one line in the record, the traceback in the worker's log
            traceback.print_exc()
            error = JobError(code="internal_error", message=f"validating files: {type(e).__name__}: {short(e)}")
    INTERRUPTER.disarm()  # from here on only our own guarded writes: nothing may interrupt them
    if error is not None:
        discard_first_half(store, p.tenant, p.job_id)
        reporter.finish(JobStatus.failed, error=error)
        return {**summary, "status": "failed", "error": error.code}

    checked["seconds"] = round(time.monotonic() - started, 3)
    if not reporter.validated("files validated; queued", checked):
        discard_first_half(store, p.tenant, p.job_id)
        return {**summary, "status": "skipped"}  # cancelled while we checked
    queue = p.queue or settings.queue
    try:
        JobQueue(redis, settings).enqueue_attempt(p.tenant, p.job_id, 1, queue=queue)
    except Exception as e:
        traceback.print_exc()
        lost = Reporter(redis, p.tenant, p.job_id, 1)
        message = f"the job could not be queued: {type(e).__name__}: {short(e)}"
        error = JobError(code="internal_error", message=message)
        lost.finish(JobStatus.failed, error=error, statuses=[JobStatus.queued])
        return {**summary, "status": "failed", "error": "internal_error"}
    return {**summary, "status": "queued", "queue": queue}


def check_files(
    record: dict[str, Any], settings: Settings, store: Storage, reporter: Reporter, work: Path
) -> dict[str, Any]:
    """Every check short of loading the model; raises a JobFailed naming the problem. Returns what it saw."""
    request = JobCreate.model_validate(record["request"])
    tenant, job_id = record["tenant"], record["id"]
    hp = hyperparameters(request, record.get("resolved") or {})
    model_path = resolve_model_path(request.model, settings.model_roots)
    options = request.data
    for param in ("augment_model", "augment_back_model"):  # they load in the training run; they must exist now
        if getattr(options, param):
            augment_model_path(options, param, settings.model_roots)

    # The first half (clean, dedup, split) is saved for the training run, which reuses it (jobs/data/prepare.py).
    prepared = prepare_job_data(store, tenant, job_id, request, hp, work, model_augment=False, save=True)
    if request.reference_file:
        fetch_rows(store, tenant, request.reference_file, "reference_file", work)
    for note in prepared.notes:
        reporter.event(note)
    for message, step in step_messages(prepared.report):
        reporter.event(message, data=step)
    if any(m in MODEL_AUGMENT for m in options.augment):
        reporter.event("data: model-based augmentation runs at the start of training")
    if request.task == Task.classification:  # the training file's likely label errors, for its profile (once)
        found = label_issues.profile_file(store, tenant, request.training_file, job_id, work)
        if found is not None and found.found:
            reporter.event(
                f"label issues: {found.found} of {found.rows} rows of the training file look mislabeled "
                "(its profile lists them; data.drop_label_issues drops them from the training split)",
                level=EventLevel.warning,
            )

    tokenizer = load(AutoTokenizer.from_pretrained, model_path)
    data = build_datasets(
        request.task,
        tokenizer,
        prepared.train,
        prepared.validation,
        hp.max_seq_length,
        hp.validation_split,
        hp.seed,
        train_on_inputs=hp.train_on_inputs,
    )
    for note in data.notes:
        reporter.event(note)
    tokens = token_report(data.train.examples, hp.max_seq_length)
    n_val = len(data.validation) if data.validation else 0
    reporter.event(
        f"tokens: {tokens.get('examples', 0)} training examples, median {tokens.get('median')}, "
        f"p95 {tokens.get('p95')}, max {tokens.get('max')} tokens (max_seq_length {hp.max_seq_length})",
        data=tokens,
    )
    if tokens.get("truncated"):
        reporter.event(
            f"{tokens['truncated']} of {tokens['examples']} training examples reach max_seq_length="
            f"{hp.max_seq_length} and are truncated",
            level=EventLevel.warning,
            data=tokens,
        )
    _save_token_profile(store, tenant, request.training_file, job_id, request.model, tokens)
    return {"n_train": len(data.train), "n_validation": n_val, "tokens": tokens}


def _save_token_profile(
    store: Storage, tenant: str, file_id: str, job_id: str, model: str, tokens: dict[str, Any]
) -> None:
    """`<file>.tokens/<job_id>.json` (the file's profile lists them); only the newest few are kept."""
    folder = file_tokens_dir(tenant, file_id)
    store.write_json(f"{folder}/{job_id}.json", {"job_id": job_id, "model": model, "created_at": time.time(), **tokens})
    kept = sorted((n for n in store.names(folder) if n.endswith(".json")), reverse=True)  # ids sort by time
    for name in kept[TOKEN_PROFILES_KEPT:]:
        store.delete(f"{folder}/{name}")
