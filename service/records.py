"""Job records and stream entries as JSON documents, and time-ordered ids (no Redis here)."""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import Mapping
from typing import Any

from ftjobs.client.models import EventLevel, EventType, Job, JobCreate, JobStatus, resolve_hyperparameters
from ftjobs.core.keys import JobField

_last_id = (0, 0)  # (ms, random part) of the last id made by this process
_id_lock = threading.Lock()


def new_id(prefix: str) -> str:
    """`prefix` + 12 hex of the ms timestamp + 8 random hex: lexical order is creation order.

    Within one process ids are strictly increasing (a second id in the same ms takes the previous
    random part + 1, as monotonic ULIDs do); across API replicas the order is exact to the ms.
    """
    global _last_id
    with _id_lock:
        ms, rand = int(time.time() * 1000), secrets.randbits(32)
        last_ms, last_rand = _last_id
        if ms <= last_ms:
            ms, rand = (last_ms, last_rand + 1) if last_rand < 0xFFFFFFFF else (last_ms + 1, 0)
        _last_id = (ms, rand)
    return f"{prefix}{ms:012x}{rand:08x}"


def event_json(
    message: str,
    type: EventType = EventType.message,
    level: EventLevel = EventLevel.info,
    data: Mapping[str, Any] | None = None,
) -> str:
    """A stream entry: the Event without its id (the stream id is the id)."""
    event = {
        "created_at": time.time(),
        "level": level,
        "type": type,
        "message": message,
        "data": dict(data or {}),
    }
    return json.dumps(event)


def status_event(status: JobStatus, message: str, **data: Any) -> str:
    return event_json(message, EventType.status, data={"status": status.value, **data})


def new_record(tenant: str, job_id: str, req: JobCreate, queue: str) -> dict[str, Any]:
    """Every field of a new job hash (values not yet JSON-encoded): validating_files, attempt 0; `queue` is
    the training queue it goes to once its files are validated."""
    return {
        JobField.id: job_id,
        JobField.tenant: tenant,
        JobField.status: JobStatus.validating_files.value,
        JobField.created_at: int(time.time()),
        JobField.started_at: None,
        JobField.finished_at: None,
        JobField.request: req.model_dump(mode="json"),
        JobField.resolved: {**resolve_hyperparameters(req), "model": req.model, "queue": queue},
        JobField.progress: {},
        JobField.last_metrics: {},
        JobField.results: {},
        JobField.attempt: 0,
        JobField.cancel_requested: False,
        JobField.error: None,
        JobField.artifacts: [],
        JobField.heartbeat_at: None,
        JobField.worker: None,
    }


def as_text(value: bytes | str) -> str:
    """Redis replies are bytes (the client is shared with RQ, which needs raw bytes)."""
    return value.decode() if isinstance(value, bytes) else value


REQUEST_FIELDS = (
    "model",
    "task",
    "method",
    "training_file",
    "validation_file",
    "reference_file",
    "parent_job_id",
    "group_field",
    "hyperparameters",
    "data",
    "suffix",
    "metadata",
)
RECORD_FIELDS = (
    *("id", "tenant", "status", "created_at", "started_at", "finished_at", "attempt", "cancel_requested"),
    *("progress", "last_metrics", "results", "error", "artifacts"),
)


def job_from_hash(raw: Mapping[Any, Any]) -> Job:
    """The API view of a job hash as Redis returns it (bytes keys, JSON values)."""
    record = {as_text(k): json.loads(v) for k, v in raw.items()}
    request = record.get(JobField.request) or {}
    view = {k: request[k] for k in REQUEST_FIELDS if k in request}
    view.update({k: record[k] for k in RECORD_FIELDS if record.get(k) is not None})
    view["resolved_hyperparameters"] = record.get(JobField.resolved) or {}
    return Job.model_validate(view)
