"""Job records, event/metric streams, files and idempotency keys in Redis.

The only module of the API that reads job progress (the worker writes it with `jobs/report.py`), using
the key names, hash fields and the GUARDED_WRITE script of `core/keys.py` and the JSON encoding of
`core/records.py`.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterable, Mapping
from typing import Any, cast

from redis import Redis
from redis.exceptions import WatchError

from ftjobs.client.models import (
    FILE_ID_PATTERN,
    JOB_ID_PATTERN,
    Event,
    EventList,
    FileList,
    FileObject,
    Job,
    JobCreate,
    JobError,
    JobList,
    JobStatus,
    MetricList,
    MetricPoint,
)
from ftjobs.core import keys
from ftjobs.core.job_writes import add_new_job
from ftjobs.core.keys import JobField
from ftjobs.core.records import (
    as_text,
    decode_entry,
    decode_hash,
    event_entry,
    guarded_write_args,
    new_record,
    status_entry,
)
from ftjobs.core.retention import archived_page
from ftjobs.core.storage import Storage
from ftjobs.core.tenants import TenantLimits
from ftjobs.service.errors import FileNotFound, IdempotencyKeyReused, JobNotCancellable, JobNotFound
from ftjobs.service.limits import ADD_FILE, USAGE, Usage, file_usage_keys, quota_exceeded

S = JobStatus
ACTIVE_STATUSES = tuple(s for s in JobStatus if not s.is_terminal)  # what max_active_jobs counts
INDEX_BATCH = 500  # jobs per INDEX_STATUS call of the status-index backfill
StreamEntry = tuple[bytes, dict[bytes, bytes]]  # (stream id, {field: value}) as redis-py returns it
MAX_STREAM_PART = 2**64 - 1  # each part of a Redis stream id `<ms>-<seq>` is an unsigned 64-bit integer
LAST_STREAM_ID = f"{MAX_STREAM_PART}-{MAX_STREAM_PART}"
_STREAM_ID = re.compile(r"([0-9]+)(?:-([0-9]+))?")  # ASCII digits only (`\d` also matches other scripts)


# What the Job view takes from the request as submitted, and from the record as the worker keeps it.
REQUEST_FIELDS = (
    *("model", "task", "method", "training_file", "validation_file", "reference_file", "parent_job_id"),
    *("group_field", "hyperparameters", "data", "suffix", "metadata", "integrations"),
    *("evaluate_only", "checkpoint_step"),
)
RECORD_FIELDS = (
    *("id", "tenant", "status", "created_at", "started_at", "finished_at", "attempt", "cancel_requested"),
    *("pause_requested", "progress", "last_metrics", "results", "error", "artifacts"),
)


def job_from_hash(raw: Mapping[Any, Any]) -> Job:
    """The API view of a job hash as Redis returns it (bytes keys, JSON values)."""
    return job_from_record(decode_hash(raw))


def job_from_record(record: dict[str, Any]) -> Job:
    """The API view of a decoded job record: the request as submitted merged with what the worker keeps."""
    request = record.get(JobField.request) or {}
    view = {k: request[k] for k in REQUEST_FIELDS if k in request}
    view.update({k: record[k] for k in RECORD_FIELDS if record.get(k) is not None})
    view["resolved_hyperparameters"] = record.get(JobField.resolved) or {}
    return Job.model_validate(view)


def stream_cursor(after: str) -> str:
    """A stream cursor `<ms>[-<seq>]` as Redis reads it (`<ms>-<seq>`); ValueError when it names no stream id."""
    match = _STREAM_ID.fullmatch(after)
    if match is None:
        raise ValueError("must be a stream id `<ms>-<seq>` (e.g. `0-0`)")
    # Leading zeros and the length first: int() refuses a string of over 4300 digits.
    parts = [(part or "0").lstrip("0") or "0" for part in match.groups()]
    if any(len(part) > len(str(MAX_STREAM_PART)) or int(part) > MAX_STREAM_PART for part in parts):
        raise ValueError(f"each part of a stream id must be at most {MAX_STREAM_PART} (2^64-1)")
    return "-".join(parts)


class Store:
    """Redis-backed state of one deployment; every lookup is scoped by tenant."""

    def __init__(self, redis: Redis, storage: Storage | None = None) -> None:
        self.redis = redis
        self.storage = storage  # where a finished job's streams go after FTJOBS_RETENTION_S (core/retention.py)
        self._guarded_write = redis.register_script(keys.GUARDED_WRITE)
        self._add_file = redis.register_script(ADD_FILE)
        self._usage = redis.register_script(USAGE)
        self._index_status = redis.register_script(keys.INDEX_STATUS)
        self._status_index_ready = False

    # ------------------------------------------------------------------ files

    def add_file(self, file: FileObject, limits: TenantLimits | None = None) -> None:
        """Record a stored file and count its bytes (stored, uploaded today), atomically; QuotaExceeded (nothing
        recorded) when it would take the tenant past `limits.max_files` or `max_stored_bytes`."""
        no_limit = ""
        written, name = self._add_file(
            keys=[*file_usage_keys(file.tenant), keys.file_key(file.tenant, file.id)],
            args=[
                keys.file_key(file.tenant, ""),
                file.id,
                file.bytes,
                file.model_dump_json(),
                no_limit if limits is None or limits.max_files is None else limits.max_files,
                no_limit if limits is None or limits.max_stored_bytes is None else limits.max_stored_bytes,
                keys.UPLOAD_DAY_TTL_S,
            ],
        )
        if not written:
            assert limits is not None
            limit = as_text(name)
            cap = cast(int, getattr(limits, limit))
            raise quota_exceeded(limit, cap, f"Storing this file ({file.bytes} bytes) would go past a quota")

    def usage(self, tenant: str) -> Usage:
        """Files stored, bytes stored and bytes uploaded today (UTC) by the tenant."""
        files, stored, today = self._usage(keys=file_usage_keys(tenant), args=[keys.file_key(tenant, "")])
        return Usage(int(files), int(stored), int(today))

    def get_file(self, tenant: str, file_id: str, param: str | None = None) -> FileObject:
        raw = (
            self.redis.get(keys.file_key(tenant, file_id)) if re.fullmatch(FILE_ID_PATTERN, file_id) else None
        )
        if raw is None:
            raise FileNotFound(f"No file {file_id!r}.", param=param)
        return FileObject.model_validate_json(raw)

    def list_files(self, tenant: str, after: str | None, limit: int) -> FileList:
        ids = self._ids_before(keys.tenant_files_key(tenant), after, limit + 1)
        raws = self.redis.mget([keys.file_key(tenant, i) for i in ids]) if ids else []
        files = [FileObject.model_validate_json(r) for r in raws if r is not None]
        page = files[:limit]
        return FileList(data=page, has_more=len(ids) > limit, last_id=page[-1].id if page else None)

    # ------------------------------------------------------------------ jobs

    def create_job(
        self, tenant: str, req: JobCreate, job_id: str, queue: str, max_active: int | None = None
    ) -> Job:
        """Write the whole record (status validating_files; `queue`: where it trains once validated), index it (by
        creation and by status) and log its first event, atomically; with `max_active`, only while the tenant has
        fewer active jobs (QuotaExceeded otherwise: the count and the write are one transaction)."""
        record = new_record(tenant, job_id, req, queue)
        active_keys = [keys.status_index_key(tenant, s) for s in ACTIVE_STATUSES]
        if max_active is not None:
            self.ensure_status_index()
        with self.redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    if max_active is not None:
                        pipe.watch(*active_keys)  # a transition beside us retries the count
                        active = sum(cast(int, pipe.zcard(k)) for k in active_keys)
                        if active >= max_active:
                            raise quota_exceeded(
                                "max_active_jobs", max_active, f"This tenant has {active} jobs not yet finished"
                            )
                    pipe.multi()
                    add_new_job(pipe, tenant, job_id, record)
                    pipe.execute()
                    break
                except WatchError:
                    continue
        return self.get_job(tenant, job_id)

    def active_jobs(self, tenant: str) -> int:
        """Jobs of the tenant not yet finished, from the status index (one ZCARD per status)."""
        self.ensure_status_index()
        pipe = self.redis.pipeline(transaction=False)
        for status in ACTIVE_STATUSES:
            pipe.zcard(keys.status_index_key(tenant, status))
        return sum(pipe.execute())

    def get_job(self, tenant: str, job_id: str) -> Job:
        raw = self.redis.hgetall(keys.job_key(tenant, job_id)) if re.fullmatch(JOB_ID_PATTERN, job_id) else {}
        if not raw:
            raise JobNotFound(f"No job {job_id!r}.")
        return job_from_hash(raw)

    def require_job(self, tenant: str, job_id: str) -> None:
        """Raise JobNotFound unless the job exists for this tenant."""
        if not re.fullmatch(JOB_ID_PATTERN, job_id) or not self.redis.exists(keys.job_key(tenant, job_id)):
            raise JobNotFound(f"No job {job_id!r}.")

    def list_jobs(
        self, tenant: str, after: str | None, limit: int, status: JobStatus | None = None
    ) -> JobList:
        """Newest first; with a status filter, pages over that status's index (a job that moved on between the
        index read and the record read is skipped)."""
        if status is not None:
            self.ensure_status_index()
        index = keys.tenant_jobs_key(tenant) if status is None else keys.status_index_key(tenant, status)
        batch = limit + 1
        jobs: list[Job] = []
        has_more, cursor = False, after
        while not has_more:
            ids = self._ids_before(index, cursor, batch)
            for job in self._load_jobs(tenant, ids):
                if status is None or job.status == status:
                    if len(jobs) == limit:
                        has_more = True
                        break
                    jobs.append(job)
            if len(ids) < batch:
                break
            cursor = ids[-1]
        return JobList(data=jobs, has_more=has_more, last_id=jobs[-1].id if jobs else None)

    def guarded_write(
        self,
        tenant: str,
        job_id: str,
        *,
        statuses: Iterable[JobStatus] = (),
        attempt: int | None = None,
        fields: Mapping[str, Any] | None = None,
        entry: str | None = None,
        stream: str | None = None,
    ) -> tuple[bool, str]:
        """Run GUARDED_WRITE: write `fields` (+ append `entry`) only in `statuses`; -> (written, status)."""
        written, status = self._guarded_write(
            keys=keys.guarded_write_keys(tenant, job_id, stream),
            args=guarded_write_args(attempt, statuses, fields or {}, entry or ""),
        )
        return bool(written), json.loads(status) if status else ""

    def mark_failed(self, tenant: str, job_id: str, error: JobError) -> None:
        """Fail a job the API could not hand to the queue (no-op once a worker owns it)."""
        self.guarded_write(
            tenant,
            job_id,
            statuses=[S.validating_files, S.queued],
            fields={
                JobField.status: S.failed.value,
                JobField.finished_at: int(time.time()),
                JobField.error: error.model_dump(mode="json"),
            },
            entry=status_entry(S.failed, f"Job failed: {error.message}", code=error.code),
        )

    def cancel_job(self, tenant: str, job_id: str) -> tuple[Job, bool]:
        """Cancel now if not started or paused -> (job, True); if running, ask the worker to stop -> (job, False)."""
        self.require_job(tenant, job_id)
        for _ in range(5):  # the status may move under us (queued -> running); each retry re-reads it
            written, status = self.guarded_write(
                tenant,
                job_id,
                statuses=[S.validating_files, S.queued, S.paused],
                fields={
                    JobField.status: S.cancelled.value,
                    JobField.cancel_requested: True,
                    JobField.finished_at: int(time.time()),
                },
                entry=status_entry(S.cancelled, "Job cancelled."),
            )
            if written:
                return self.get_job(tenant, job_id), True
            if not status:
                raise JobNotFound(f"No job {job_id!r}.")
            if status != S.running:
                if JobStatus(status).is_terminal:
                    raise JobNotCancellable(f"Job {job_id} is already {status}; it cannot be cancelled.")
                continue
            job = self.get_job(tenant, job_id)
            if job.cancel_requested:
                return job, False
            written, _ = self.guarded_write(
                tenant,
                job_id,
                statuses=[S.running],
                fields={JobField.cancel_requested: True},
                entry=event_entry("Cancellation requested; the worker stops within seconds."),
            )
            if written:
                return self.get_job(tenant, job_id), False
        return self.get_job(tenant, job_id), False

    # ------------------------------------------------------------------ the status index

    @property
    def status_index_ready(self) -> bool:
        """ensure_status_index has run in this process (it is then a no-op)."""
        return self._status_index_ready

    def ensure_status_index(self) -> None:
        """Index the jobs created before the status index existed, once per deployment (then once per process)."""
        if self._status_index_ready:
            return
        if not self.redis.exists(keys.STATUS_INDEX_BACKFILLED_KEY):
            self.backfill_status_index()
        self._status_index_ready = True

    def backfill_status_index(self) -> int:
        """Put every job under its current status (idempotent, atomic per batch; replicas may run it at once),
        then set the marker: a run cut short is simply done again."""
        added = 0
        for index in self.redis.scan_iter(match=keys.tenant_jobs_key("*"), _type="ZSET"):
            tenant = as_text(index).split(":")[2]
            ids = [as_text(i) for i in cast(list[bytes], self.redis.zrange(index, 0, -1))]
            for start in range(0, len(ids), INDEX_BATCH):
                batch = ids[start : start + INDEX_BATCH]
                added += int(
                    self._index_status(
                        keys=[keys.status_index_prefix(tenant), *(keys.job_key(tenant, i) for i in batch)],
                        args=batch,
                    )
                )
        self.redis.set(keys.STATUS_INDEX_BACKFILLED_KEY, json.dumps(time.time()), nx=True)
        return added

    # ------------------------------------------------------------------ streams

    def events(self, tenant: str, job_id: str, after: str | None, limit: int) -> EventList:
        self.require_job(tenant, job_id)
        entries, has_more = self._stream_page(keys.events_key(tenant, job_id), after, limit)
        if not entries and self.storage is not None:  # archived: the same page, from the store
            entries, has_more = archived_page(self.redis, self.storage, tenant, job_id, "events", after, limit)
        data = [Event.model_validate({**body, "id": sid}) for sid, body in entries]
        return EventList(data=data, has_more=has_more, last_id=data[-1].id if data else None)

    def metrics(self, tenant: str, job_id: str, after: str | None, limit: int) -> MetricList:
        self.require_job(tenant, job_id)
        entries, has_more = self._stream_page(keys.metrics_key(tenant, job_id), after, limit)
        if not entries and self.storage is not None:  # archived: the same page, from the store
            entries, has_more = archived_page(self.redis, self.storage, tenant, job_id, "metrics", after, limit)
        data = [MetricPoint.model_validate({**body, "id": sid}) for sid, body in entries]
        return MetricList(data=data, has_more=has_more, last_id=data[-1].id if data else None)

    # ------------------------------------------------------------------ idempotency

    def claim_idempotency_key(self, tenant: str, key: str, job_id: str, request_sha256: str) -> str | None:
        """Bind `key` to `job_id`; None if claimed now, else the job id it already names (same body only)."""
        name = keys.idempotency_key(tenant, key)
        value = json.dumps({"job_id": job_id, "request_sha256": request_sha256})
        for _ in range(3):  # the key may expire between SET NX and GET
            if self.redis.set(name, value, nx=True, ex=keys.IDEMPOTENCY_TTL_S):
                return None
            raw = self.redis.get(name)
            if raw is None:
                continue
            bound = json.loads(raw)
            if bound["request_sha256"] != request_sha256:
                raise IdempotencyKeyReused(
                    "This Idempotency-Key was already used with a different request body.",
                    param="Idempotency-Key",
                )
            return str(bound["job_id"])
        raise IdempotencyKeyReused(
            "This Idempotency-Key could not be claimed; retry.", param="Idempotency-Key"
        )

    def release_idempotency_key(self, tenant: str, key: str, job_id: str) -> None:
        """Forget a claim whose job was never created (so a retry with the same key can proceed)."""
        name = keys.idempotency_key(tenant, key)
        raw = self.redis.get(name)
        if raw is not None and json.loads(raw).get("job_id") == job_id:
            self.redis.delete(name)

    # ------------------------------------------------------------------ helpers

    def _ids_before(self, key: str, after: str | None, count: int) -> list[str]:
        """Members below `after`, newest first: ZRANGE key (after - BYLEX REV LIMIT 0 n."""
        high = f"({after}" if after else "+"
        members = self.redis.zrange(key, high, "-", desc=True, bylex=True, offset=0, num=count)
        return [as_text(m) for m in cast(list[bytes], members)]

    def _load_jobs(self, tenant: str, ids: list[str]) -> list[Job]:
        pipe = self.redis.pipeline(transaction=False)
        for job_id in ids:
            pipe.hgetall(keys.job_key(tenant, job_id))
        return [job_from_hash(raw) for raw in pipe.execute() if raw]

    def _stream_page(
        self, key: str, after: str | None, limit: int
    ) -> tuple[list[tuple[str, dict[str, Any]]], bool]:
        low = "-"
        if after:
            cursor = stream_cursor(after)
            if cursor == LAST_STREAM_ID:  # nothing can follow it (and Redis refuses the exclusive range)
                return [], False
            low = f"({cursor}"
        raw = cast(list[StreamEntry], self.redis.xrange(key, min=low, max="+", count=limit + 1))
        entries = [(as_text(sid), decode_entry(body)) for sid, body in raw[:limit]]
        return entries, len(raw) > limit

    @staticmethod
    def _xadd(pipe: Any, stream: str, entry: str) -> None:
        pipe.xadd(stream, {keys.STREAM_FIELD: entry}, maxlen=keys.STREAM_MAXLEN, approximate=True)
