"""Job records and stream entries as JSON documents, and time-ordered ids: the one encoding of `core/keys.py`'s
layout, used by the API (service/store.py creates jobs and reads them) and the worker (jobs/report.py writes
their progress). No Redis here: these are the values and arguments that go over the wire to it.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import Iterable, Mapping
from typing import Any

from ftjobs.client.models import (
    Event,
    EventLevel,
    EventType,
    JobCreate,
    JobStatus,
    MetricPoint,
    resolve_hyperparameters,
)
from ftjobs.core.keys import STREAM_FIELD, JobField

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


# ----------------------------------------------------------------------------- job hash values


def encode(value: Any) -> str:
    """One job-hash value as JSON: pydantic models (alone or in a list) as their JSON form, numpy/torch scalars
    as plain numbers."""
    if hasattr(value, "model_dump"):
        value = value.model_dump(mode="json")
    elif isinstance(value, list):
        value = [v.model_dump(mode="json") if hasattr(v, "model_dump") else v for v in value]
    return json.dumps(value, default=_plain)


def _plain(value: Any) -> Any:
    """numpy/torch scalars (`.item()`) and anything else JSON lacks, as plain values."""
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def as_text(value: bytes | str) -> str:
    """Redis replies are bytes (the client is shared with RQ, which needs raw bytes)."""
    return value.decode() if isinstance(value, bytes) else value


def decode_hash(raw: Mapping[Any, Any]) -> dict[str, Any]:
    """A job hash as Redis returns it (bytes keys, JSON values) as a plain record."""
    return {as_text(k): json.loads(v) for k, v in raw.items()}


def guarded_write_args(
    attempt: int | None, statuses: Iterable[str], fields: Mapping[str, Any], entry: str = ""
) -> list[str | int]:
    """ARGV of GUARDED_WRITE (its contract is in core/keys.py; its KEYS come from `keys.guarded_write_keys`): write
    `fields` at `attempt` (None: any) in one of `statuses` (none: any), and append `entry` ("" = nothing)."""
    pairs = [x for f, v in fields.items() for x in (str(f), encode(v))]
    return ["" if attempt is None else str(attempt), ",".join(statuses), len(fields), *pairs, entry]


def new_record(tenant: str, job_id: str, req: JobCreate, queue: str | None) -> dict[str, Any]:
    """Every field of a new job hash (values not yet encoded): validating_files, attempt 0; `queue` is the
    training queue it goes to once its files are validated (None: the worker's own FTJOBS_QUEUE)."""
    resolved = {**resolve_hyperparameters(req), "model": req.model, **({"queue": queue} if queue else {})}
    return {
        JobField.id: job_id,
        JobField.tenant: tenant,
        JobField.status: JobStatus.validating_files.value,
        JobField.created_at: int(time.time()),
        JobField.started_at: None,
        JobField.finished_at: None,
        JobField.request: req.model_dump(mode="json"),
        JobField.resolved: resolved,
        JobField.progress: {},
        JobField.last_metrics: {},
        JobField.results: {},
        JobField.attempt: 0,
        JobField.cancel_requested: False,
        JobField.pause_requested: False,
        JobField.error: None,
        JobField.artifacts: [],
        JobField.heartbeat_at: None,
        JobField.worker: None,
    }


# ----------------------------------------------------------------------------- stream entries


def event_entry(
    message: str,
    type: EventType = EventType.message,
    level: EventLevel = EventLevel.info,
    data: Mapping[str, Any] | None = None,
) -> str:
    """An event stream entry: the Event without its id (the stream id is the id)."""
    event = Event(id="", created_at=time.time(), level=level, type=type, message=message, data=dict(data or {}))
    return event.model_dump_json(exclude={"id"})


def status_entry(status: JobStatus, message: str, level: EventLevel = EventLevel.info, **data: Any) -> str:
    """A `status` event: data carries the new status (and whatever else the transition tells)."""
    return event_entry(message, EventType.status, level, {"status": status.value, **data})


def metric_entry(point: MetricPoint) -> str:
    """A metrics stream entry: the MetricPoint without its id."""
    return point.model_dump_json(exclude={"id"})


def decode_entry(fields: Mapping[Any, Any]) -> dict[str, Any]:
    """A stream entry's document, from its fields as Redis returns them (bytes or str keys)."""
    raw = fields.get(STREAM_FIELD.encode())
    return dict(json.loads(raw if raw is not None else fields[STREAM_FIELD]))
