"""A job's events live, as Server-Sent Events: the backlog, then each event as the worker writes it.

One open stream costs one connection of the app's async Redis client while it waits (XREAD BLOCK, at most
`sse_keepalive_s` at a time, then a keep-alive comment), never a thread. The stream ends after the event that
makes the job terminal (at once, after the backlog, for a job that was already terminal), so a client that
reconnects with `Last-Event-ID` gets exactly what it had not seen. Each API process holds at most
`sse_max_streams` open streams per tenant (`TooManyStreams` beyond).

The wire format, the response class and the keep-alive comment are FastAPI's (`fastapi.sse`); FastAPI's
generator endpoints are not used because the route also answers JSON pages, and the keep-alive interval is a
setting here.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any, cast

from fastapi import Depends, Request
from fastapi.sse import KEEPALIVE_COMMENT, EventSourceResponse, format_sse_event
from redis.asyncio import Redis as AsyncRedis
from redis.exceptions import RedisError

from ftjobs.client.models import Event, JobStatus
from ftjobs.core import keys
from ftjobs.core.keys import JobField
from ftjobs.core.records import as_text, decode_entry
from ftjobs.core.retention import ARCHIVED_FIELD, archived_after
from ftjobs.core.settings import Settings
from ftjobs.core.storage import Storage
from ftjobs.service.errors import TooManyStreams

log = logging.getLogger("ftjobs.service")
BATCH = 500  # events per XREAD
RETRY_MS = 2000  # what EventSource waits before it reconnects (the `retry:` field sent first)
MEDIA_TYPE = "text/event-stream"
# The 200's second content type in the spec: one SSE event per job event, its data an Event as JSON.
OPENAPI_CONTENT = {
    MEDIA_TYPE: {
        "itemSchema": {
            "type": "object",
            "required": ["data"],
            "properties": {
                "data": {
                    "type": "string",
                    "contentMediaType": "application/json",
                    "contentSchema": {"$ref": "#/components/schemas/Event"},
                },
                "event": {"type": "string", "description": "The event's `type`."},
                "id": {"type": "string", "description": "The event's id: send it back as `Last-Event-ID`."},
                "retry": {"type": "integer", "minimum": 0},
            },
        }
    }
}


class StreamSlot:
    """One open stream of a tenant, given back once (also when its response never started)."""

    def __init__(self, slots: StreamSlots, tenant: str) -> None:
        self._slots, self._tenant, self._held = slots, tenant, True

    def release(self) -> None:
        if self._held:
            self._held = False
            self._slots._release(self._tenant)

    def __del__(self) -> None:
        self.release()


class StreamSlots:
    """Open streams per tenant in this process, at most `limit` each."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._open: Counter[str] = Counter()
        self._lock = threading.Lock()  # taken from the route's worker thread and from the event loop

    def acquire(self, tenant: str) -> StreamSlot:
        with self._lock:
            if self._open[tenant] >= self.limit:
                raise TooManyStreams(
                    f"This tenant has {self._open[tenant]} event streams open here (at most {self.limit}); "
                    "close one or poll the events instead.",
                    headers={"Retry-After": "5"},
                )
            self._open[tenant] += 1
        return StreamSlot(self, tenant)

    def open(self, tenant: str) -> int:
        return self._open[tenant]

    def _release(self, tenant: str) -> None:
        with self._lock:
            self._open[tenant] -= 1
            if self._open[tenant] <= 0:
                del self._open[tenant]


class Streaming:
    """What the app keeps for streams: its async Redis client, the per-tenant slots and the keep-alive interval."""

    def __init__(self, settings: Settings) -> None:
        self.keepalive_s = settings.sse_keepalive_s
        # Reads may wait up to a keep-alive interval (XREAD BLOCK): the socket timeout must be longer.
        self.redis = AsyncRedis.from_url(
            settings.redis_url, socket_connect_timeout=2, socket_timeout=settings.sse_keepalive_s + 10
        )
        self.slots = StreamSlots(settings.sse_max_streams)
        self.storage = Storage(settings.storage_url)  # a finished job's events, once archived (core/retention.py)

    async def aclose(self) -> None:
        await self.redis.aclose()


async def job_status(redis: AsyncRedis, tenant: str, job_id: str) -> JobStatus | None:
    """The job's status now; None once its record is gone."""
    raw = await redis.hget(keys.job_key(tenant, job_id), JobField.status)
    if raw is None:
        return None
    try:
        return JobStatus(json.loads(raw))
    except ValueError:  # a status newer than this process knows: not one that ends a stream
        return JobStatus.running


def ends_job(event: Event) -> bool:
    """The status event that makes a job terminal: the last one a stream sends."""
    status = event.data.get("status") if event.type == "status" else None
    return isinstance(status, str) and status in {s.value for s in JobStatus if s.is_terminal}


async def follow_events(
    redis: AsyncRedis, tenant: str, job_id: str, after: str | None, keepalive_s: float, storage: Storage | None = None
) -> AsyncIterator[Event | None]:
    """The job's events after `after`, then each new one as it is written; None after `keepalive_s` without one.

    Ends after the event that makes the job terminal; for a job terminal before we looked, after the backlog
    (its terminal event is in it, or before `after`: the status and its event are written in one script).
    """
    key, cursor = keys.events_key(tenant, job_id), after or "0-0"
    status = await job_status(redis, tenant, job_id)
    if status is not None and status.is_terminal and storage is not None:
        if await redis.hexists(keys.job_key(tenant, job_id), ARCHIVED_FIELD):  # its events are in the store now
            for archived_id, body in await asyncio.to_thread(archived_after, storage, tenant, job_id, "events", after):
                yield Event.model_validate({**body, "id": archived_id})
            return
    block: int | None = None  # the backlog first, without waiting
    while True:
        entries = stream_entries(await redis.xread({key: cursor}, count=BATCH, block=block))
        for sid, fields in entries:
            cursor = as_text(sid)
            event = Event.model_validate({**decode_entry(fields), "id": cursor})
            yield event
            if ends_job(event):
                return
        if entries:
            continue
        if block is not None:
            yield None  # a keep-alive; then look at the job: a stream trimmed past its end, or a deleted job
            status = await job_status(redis, tenant, job_id)
        if status is None or status.is_terminal:
            if block is None or not await redis.xread({key: cursor}, count=1):
                return
            continue  # its last events landed meanwhile: read them first
        block = max(1, int(keepalive_s * 1000))


def stream_entries(reply: Any) -> list[tuple[bytes, dict[bytes, bytes]]]:
    """The entries of a one-stream XREAD reply ([[key, entries]] in RESP2, {key: entries} in RESP3)."""
    if not reply:
        return []
    entries = next(iter(reply.values())) if isinstance(reply, dict) else reply[0][1]
    return cast(list[tuple[bytes, dict[bytes, bytes]]], entries)


def event_frame(event: Event) -> bytes:
    """`id: <stream id>`, `event: <type>`, `data: <Event JSON>`."""
    return format_sse_event(data_str=event.model_dump_json(), event=str(event.type), id=event.id)


async def sse_body(
    events: AsyncIterator[Any], slot: StreamSlot, render: Callable[[Any], bytes] = event_frame
) -> AsyncIterator[bytes]:
    """The response body: `retry:` first, each item rendered (None: a keep-alive comment); the slot is given back
    at the end. A Redis error ends the stream (the client resumes with Last-Event-ID)."""
    try:
        yield format_sse_event(retry=RETRY_MS)
        async for item in events:
            yield KEEPALIVE_COMMENT if item is None else render(item)
    except RedisError as exc:
        log.warning("an event stream ended early: Redis: %s", exc)
    finally:
        slot.release()


def event_stream_response(
    streaming: Streaming,
    tenant: str,
    job_id: str,
    after: str | None,
    render: Callable[[Any], bytes] = event_frame,
) -> EventSourceResponse:
    """The streaming answer for a job the caller may read (checked before): TooManyStreams past the limit."""
    slot = streaming.slots.acquire(tenant)
    events = follow_events(streaming.redis, tenant, job_id, after, streaming.keepalive_s, streaming.storage)
    return EventSourceResponse(
        sse_body(events, slot, render),
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},  # no proxy buffering
    )


def wants_event_stream(accept: str | None) -> bool:
    """`Accept` names text/event-stream (`*/*` and JSON get the page)."""
    return any(part.split(";")[0].strip().lower() == MEDIA_TYPE for part in (accept or "").split(","))


def get_streaming(request: Request) -> Streaming:
    streaming: Streaming = request.app.state.streaming
    return streaming


StreamingDep = Annotated[Streaming, Depends(get_streaming)]
