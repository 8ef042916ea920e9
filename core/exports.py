"""Exports for serving (core's half, shared by the API, which creates exports and reads them, and the worker, which
runs them: jobs/export_job.py).

An export is one RQ job `ftjobs.jobs.export_job.run` on the job's training queue (a worker that loads models), with
its own record: Redis hash `ftjobs:exports:{tenant}:{job_id}` (export id -> Export JSON). The API writes the record
`queued` and enqueues; from then on the worker is its one writer (running, events, succeeded or failed with its
files and checks). A work horse that died leaves the record `running` while RQ says the job failed: `settle` (on
every read) marks it failed, `worker_lost`, and deletes what it had staged.

Files: written under `{job}/exports/{id}.staging/` and moved to `{job}/exports/{id}/` (manifest.json last) only
once every one was written and checked, so a failed export leaves no half-written files.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

from redis import Redis

from ftjobs.client.models.common import JOB_ID_PATTERN, TENANT_PATTERN
from ftjobs.client.models.exports import (
    EXPORT_ID_PATTERN,
    Export,
    ExportCreate,
    ExportError,
    ExportEvent,
    ExportStatus,
)
from ftjobs.core import keys
from ftjobs.core.queue import JobQueue
from ftjobs.core.records import as_text, new_id
from ftjobs.core.settings import Settings

EXPORT_FUNC = "ftjobs.jobs.export_job.run"  # the RQ job (jobs/worker.py runs it among ftjobs' own)
EXPORT_TIMEOUT_S = 6 * 3600  # merging and writing a 70B model takes a while
MAX_EVENTS = 50
LOST_STATES = {"failed", "stopped", "canceled", "missing"}  # RQ's word that no horse will write this export again


def exports_key(tenant: str, job_id: str) -> str:
    return f"{keys.PREFIX}:exports:{tenant}:{job_id}"


def export_dir(tenant: str, job_id: str, export_id: str) -> str:
    """Where an export's finished files lie in the store."""
    return f"{keys.job_dir(tenant, job_id)}/exports/{export_id}"


def staging_dir(tenant: str, job_id: str, export_id: str) -> str:
    """Where a running export uploads its files before they are moved under `export_dir` together."""
    return f"{keys.job_dir(tenant, job_id)}/exports/{export_id}.staging"


def rq_id(export_id: str) -> str:
    return f"{export_id}-run"


# ----------------------------------------------------------------------------- records


def save(redis: Redis, tenant: str, export: Export) -> None:
    redis.hset(exports_key(tenant, export.job_id), export.id, export.model_dump_json())


def load(redis: Redis, tenant: str, job_id: str, export_id: str) -> Export | None:
    raw = redis.hget(exports_key(tenant, job_id), export_id)
    return Export.model_validate_json(raw) if raw is not None else None


def all_exports(redis: Redis, tenant: str, job_id: str) -> list[Export]:
    raw = redis.hgetall(exports_key(tenant, job_id))
    found = [Export.model_validate_json(as_text(v)) for v in raw.values()]
    return sorted(found, key=lambda e: e.id)  # ids are time-ordered


def event(export: Export, message: str, level: str = "info") -> None:
    export.events = [*export.events, ExportEvent(created_at=time.time(), level=level, message=message)][-MAX_EVENTS:]  # type: ignore[arg-type]


def create(redis: Redis, settings: Settings, tenant: str, job_id: str, req: ExportCreate, queue: str | None) -> Export:
    """The export's record (`queued`) and its RQ job on `queue` (the job's training queue)."""
    req = req.resolved()
    export = Export(
        id=new_id("export-"), job_id=job_id, status=ExportStatus.queued, format=req.format, dtype=req.dtype,
        quantization=req.quantization, name=req.name, created_at=int(time.time()),
    )  # fmt: skip
    event(export, f"queued: {describe(export)}")
    save(redis, tenant, export)
    payload = {"tenant": tenant, "job_id": job_id, "export_id": export.id}
    JobQueue(redis, settings).queue(queue or settings.queue).enqueue(
        EXPORT_FUNC,
        kwargs={"payload": payload},
        job_id=rq_id(export.id),
        job_timeout=EXPORT_TIMEOUT_S,
        result_ttl=24 * 3600,
        failure_ttl=7 * 24 * 3600,
        description=f"export {export.id} of {job_id} (tenant {tenant})",
    )
    return export


def describe(export: Export) -> str:
    option = export.dtype or export.quantization
    return f"{export.format.value}" + (f" ({option.value})" if option else "")


def finish(export: Export, status: ExportStatus, error: ExportError | None = None) -> None:
    export.status, export.error, export.finished_at = status, error, int(time.time())
    if error is not None:
        export.files = []
        event(export, f"failed: {error.message}", level="error")
    else:
        event(export, f"succeeded: {len(export.files)} files")


def settle(redis: Redis, settings: Settings, tenant: str, export: Export, storage: Any = None) -> Export:
    """An export whose RQ job ended without the worker concluding it (its horse was killed): failed, worker_lost."""
    if export.status not in (ExportStatus.queued, ExportStatus.running):
        return export
    state = JobQueue(redis, settings).state(rq_id(export.id))
    if state not in LOST_STATES:
        return export
    fresh = load(redis, tenant, export.job_id, export.id)  # the worker may have concluded it meanwhile
    if fresh is None or fresh.status not in (ExportStatus.queued, ExportStatus.running):
        return fresh or export
    message = f"the worker running it was lost (its RQ job is {state}); create the export again"
    finish(fresh, ExportStatus.failed, ExportError(code="worker_lost", message=message))
    save(redis, tenant, fresh)
    if storage is not None:
        storage.delete(staging_dir(tenant, export.job_id, export.id))
    return fresh


def payload_fields(payload: Any) -> dict[str, str] | None:
    """The worker's check of an export RQ job's payload: exactly tenant, job_id and export_id, well-formed."""
    if not isinstance(payload, dict) or set(payload) != {"tenant", "job_id", "export_id"}:
        return None
    patterns = {"tenant": TENANT_PATTERN, "job_id": JOB_ID_PATTERN, "export_id": EXPORT_ID_PATTERN}
    if not all(isinstance(payload[k], str) and re.match(p, payload[k]) for k, p in patterns.items()):
        return None
    return {k: str(payload[k]) for k in patterns}


def manifest_json(value: dict[str, Any]) -> bytes:
    return (json.dumps(value, indent=2, sort_keys=True) + "\n").encode()
