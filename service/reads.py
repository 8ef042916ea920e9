"""The API's hot reads on the event loop (redis.asyncio), each page in one Redis round trip, answered as JSON bytes.

Read-only twins of `service/store.py`'s readers for the routes that are polled (a job, the job and file lists, a
job's events and metrics). Stream entries and file records are written by our own code as the models' JSON, so
they are spliced into the page as stored (no parse, no re-validation); a job's view goes through the Job model
(it merges the request with the record and fills the defaults), once per distinct record: views are kept by the
record's content, so a polled job or list page that did not change costs no decoding. Whatever these do not find
in Redis is handed to the sync `Store` (in a thread), which says why (404) or finds it elsewhere.

The most polled request, `GET /v1/jobs/{job_id}`, is answered by `AuthFirst` before routing: the tenant's request
rate and the job's record in one round trip over the auto-pipelined client (`service/pipelined.py`).
"""

from __future__ import annotations

import re
from typing import Any, cast

import orjson
from pydantic import TypeAdapter
from redis.asyncio import Redis as AsyncRedis
from starlette.types import Scope, Send

from ftjobs.client.models import FILE_ID_PATTERN, JOB_ID_PATTERN, Event, FileObject, Job, JobStatus, MetricPoint
from ftjobs.core import keys
from ftjobs.core.tenants import TenantLimits
from ftjobs.service.limits import RATE_SCRIPT, RateDecision, burst_of
from ftjobs.service.pipelined import PipelinedRedis
from ftjobs.service.store import LAST_STREAM_ID, job_from_record, stream_cursor

# One page of an index with its records: ZRANGE <index> <high> - BYLEX REV LIMIT 0 <n>, then each member's record
# (HGETALL for jobs, GET for files). KEYS[1] = the index; ARGV = high ("+" or "(<id>"), n, record key prefix, "hash"
# or "string". Returns {id, record} pairs, newest first (a record gone meanwhile comes back empty or false).
PAGE_SCRIPT = """
local ids = redis.call('ZRANGE', KEYS[1], ARGV[1], '-', 'BYLEX', 'REV', 'LIMIT', 0, tonumber(ARGV[2]))
local out = {}
for i, id in ipairs(ids) do
  if ARGV[4] == 'hash' then out[i] = {id, redis.call('HGETALL', ARGV[3] .. id)}
  else out[i] = {id, redis.call('GET', ARGV[3] .. id)} end
end
return out
"""
# The job GET in one round trip: the tenant's request rate (limits.RATE_SCRIPT, as a function) and, when the request
# is allowed, the job's record. KEYS[1] = the rate key, KEYS[2] = the job's key; ARGV = RATE_SCRIPT's (interval,
# burst), both "" when the tenant has no rate limit. Returns RATE_SCRIPT's four numbers and HGETALL's pairs (empty
# when there is no such job, or when the request is refused).
JOB_GET_SCRIPT = f"""
local function rate()
{RATE_SCRIPT}
end
local verdict = {{1, 0, 0, 0}}
if ARGV[1] ~= '' then verdict = rate() end
verdict[5] = verdict[1] == 1 and redis.call('HGETALL', KEYS[2]) or {{}}
return verdict
"""
MAX_VIEWS = 1024  # job views kept rendered (the polled jobs and list pages)
MAX_VIEW_RECORD_BYTES = 32 * 1024  # a larger record is rendered at each read (the cache holds <= ~64 MB)
FILES = TypeAdapter(list[FileObject])
EVENTS = TypeAdapter(list[Event])
METRICS = TypeAdapter(list[MetricPoint])
_JOB_ID = re.compile(JOB_ID_PATTERN)
_FILE_ID = re.compile(FILE_ID_PATTERN)


def job_view(pairs: list[Any] | dict[Any, Any]) -> Job:
    """The Job of a job hash as HGETALL (flat field/value list) or a pipeline (a dict) returns it."""
    items = pairs.items() if isinstance(pairs, dict) else zip(pairs[::2], pairs[1::2], strict=True)
    return job_from_record({k.decode(): orjson.loads(v) for k, v in items})  # orjson: ~5x json's decode


def rate_args(limits: TenantLimits) -> tuple[int, int] | None:
    """RATE_SCRIPT's ARGV for the tenant's request rate: (microseconds per request, burst); None for no limit."""
    if limits.requests_per_second is None:
        return None
    return max(1, round(1_000_000 / limits.requests_per_second)), burst_of(limits)


def rate_decision(reply: list[Any], burst: int) -> RateDecision:
    """RATE_SCRIPT's reply {allowed, remaining, retry_after_us, reset_after_us} as a RateDecision."""
    allowed, remaining, retry_us, reset_us = (int(x) for x in reply[:4])
    return RateDecision(bool(allowed), burst, remaining, retry_us / 1e6, reset_us / 1e6)


def page_json(data: bytes, has_more: bool, last_id: str | None) -> bytes:
    """The list envelope of `client/models/common.py` (`Page`) around `data`, a JSON array."""
    tail = orjson.dumps({"has_more": has_more, "last_id": last_id})
    return b'{"object":"list","data":' + data + b"," + tail[1:]


def checked(adapter: TypeAdapter[list[Any]], items: list[bytes]) -> bytes:
    """Stored documents as one JSON array, through their model in one call (pydantic's Rust core): a record
    written before a field existed gets its default, as the sync readers give it."""
    return adapter.dump_json(adapter.validate_json(b"[" + b",".join(items) + b"]"))


def with_id(entry: bytes, stream_id: str) -> bytes:
    """A stream entry (the model's JSON without its id) with its stream id as `id`, spliced in."""
    return b'{"id":' + orjson.dumps(stream_id) + (b"," + entry[1:] if entry != b"{}" else b"}")


class AsyncReads:
    """Reads for the polled routes, over the async client; every lookup scoped by tenant."""

    def __init__(self, redis: AsyncRedis) -> None:
        self.redis = redis
        self._page = redis.register_script(PAGE_SCRIPT)
        self._job_get = redis.register_script(JOB_GET_SCRIPT)
        self._rate = redis.register_script(RATE_SCRIPT)
        self._pipelined = PipelinedRedis.for_client(redis)  # the job GET's script (None: redis-py's client)
        self._views: dict[tuple[bytes, ...], tuple[bytes, JobStatus, str]] = {}  # a record as HGETALL gave it -> _view

    async def job_with_rate(
        self, tenant: str, job_id: str, limits: TenantLimits
    ) -> tuple[RateDecision | None, list[bytes]]:
        """The tenant's rate verdict for one more request (None: no rate limit) and, when allowed, the job's record
        as HGETALL's pairs (empty when there is no such job), in one round trip; `job_id` is a valid id."""
        args = rate_args(limits)
        rate_key, job_key = keys.rate_key(tenant), keys.job_key(tenant, job_id)
        if self._pipelined is None:
            reply = await self._job_get(keys=(rate_key, job_key), args=args or ("", ""))
            return (rate_decision(reply, args[1]) if args else None), reply[4]
        if args is None:
            return None, await self._pipelined.call("HGETALL", job_key)
        # The script and HGETALL in one write: Redis spends less than on the script's own HGETALL (a record read
        # for a refused request is dropped here).
        reply, record = await self._pipelined.evalsha_with(
            self._rate.sha, RATE_SCRIPT, [rate_key], args, ("HGETALL", job_key)
        )
        decision = rate_decision(reply, args[1])
        return decision, record if decision.allowed else []

    async def aclose(self) -> None:
        if self._pipelined is not None:
            await self._pipelined.aclose()

    def job_json(self, record: list[bytes]) -> bytes:
        """The Job view of a record (HGETALL's pairs) as JSON."""
        return self._view(record)[0]

    def _view(self, record: list[bytes]) -> tuple[bytes, JobStatus, str]:
        """A record's view as JSON, its status and id: a record read again unchanged (a polled job, a polled list)
        is not decoded, validated and serialized again (the view is a function of the record alone)."""
        key = tuple(record)
        view = self._views.get(key)
        if view is None:
            job = job_view(record)
            view = job.model_dump_json().encode(), job.status, job.id
            if sum(map(len, record)) <= MAX_VIEW_RECORD_BYTES:
                if len(self._views) >= MAX_VIEWS:
                    del self._views[next(iter(self._views))]  # the oldest
                self._views[key] = view
        return view

    async def job(self, tenant: str, job_id: str) -> Job | None:
        """The job, or None when there is no such job (or the id cannot name one)."""
        if not _JOB_ID.fullmatch(job_id):
            return None
        raw = await self.redis.hgetall(keys.job_key(tenant, job_id))
        return job_view(raw) if raw else None

    async def jobs(self, tenant: str, after: str | None, limit: int, status: JobStatus | None) -> bytes:
        """A JobList page as JSON (the status index must be ready when `status` is given: Store.ensure_status_index),
        one round trip per batch; with a status, a job that moved on since the index was read is skipped."""
        index = keys.tenant_jobs_key(tenant) if status is None else keys.status_index_key(tenant, status)
        prefix = keys.job_key(tenant, "")
        batch, cursor = limit + 1, after
        jobs: list[bytes] = []
        last_id: str | None = None
        has_more = False
        while not has_more:
            pairs = await self._page(keys=[index], args=[f"({cursor}" if cursor else "+", batch, prefix, "hash"])
            for _, raw in cast(list[list[Any]], pairs):
                if not raw:
                    continue
                body, job_status, job_id = self._view(raw)
                if status is None or job_status == status:
                    if len(jobs) == limit:
                        has_more = True
                        break
                    jobs.append(body)
                    last_id = job_id
            if len(pairs) < batch:
                break
            cursor = pairs[-1][0].decode()
        return page_json(b"[" + b",".join(jobs) + b"]", has_more, last_id)

    async def files(self, tenant: str, after: str | None, limit: int) -> tuple[list[bytes], bool, str | None]:
        """A page of the tenant's file records as stored (FileObject JSON), has_more, and the page's last id,
        in one round trip."""
        prefix = keys.file_key(tenant, "")
        index = keys.tenant_files_key(tenant)
        pairs = await self._page(keys=[index], args=[f"({after}" if after else "+", limit + 1, prefix, "string"])
        found = [(i.decode(), raw) for i, raw in cast(list[list[Any]], pairs) if raw]
        page = found[:limit]
        return [raw for _, raw in page], len(pairs) > limit, page[-1][0] if page else None

    async def file_json(self, tenant: str, file_id: str) -> bytes | None:
        """A file's record as stored (FileObject JSON), or None."""
        if not _FILE_ID.fullmatch(file_id):
            return None
        return cast(bytes | None, await self.redis.get(keys.file_key(tenant, file_id)))

    async def events(self, tenant: str, job_id: str, after: str | None, limit: int) -> bytes | None:
        """An EventList page as JSON, or None (ask `Store.events`)."""
        return await self._stream(keys.events_key(tenant, job_id), EVENTS, tenant, job_id, after, limit)

    async def metrics(self, tenant: str, job_id: str, after: str | None, limit: int) -> bytes | None:
        """A MetricList page as JSON, or None (ask `Store.metrics`)."""
        return await self._stream(keys.metrics_key(tenant, job_id), METRICS, tenant, job_id, after, limit)

    async def _stream(
        self, key: str, adapter: TypeAdapter[list[Any]], tenant: str, job_id: str, after: str | None, limit: int
    ) -> bytes | None:
        """A page of the job's stream `key` as JSON, in one round trip; None when the job is not in Redis, or its
        page is empty (the caller asks `Store`, which says why or may know more)."""
        if not _JOB_ID.fullmatch(job_id):
            return None
        low = "-"
        if after:
            cursor = stream_cursor(after)
            if cursor == LAST_STREAM_ID:  # nothing can follow it (and Redis refuses the exclusive range)
                return None
            low = f"({cursor}"
        pipe = self.redis.pipeline(transaction=False)
        pipe.exists(keys.job_key(tenant, job_id))
        pipe.xrange(key, min=low, max="+", count=limit + 1)
        exists, raw = await pipe.execute()
        if not exists or not raw:
            return None
        entries = [with_id(body[keys.STREAM_FIELD.encode()], sid.decode()) for sid, body in raw[:limit]]
        return page_json(checked(adapter, entries), len(raw) > limit, raw[:limit][-1][0].decode())


JOB_PATH = re.compile(r"/v1/jobs/(ftjob-[0-9a-f]{20})")  # JOB_ID_PATTERN, as the route's path


def job_get(scope: Scope) -> str | None:
    """The job id of a `GET /v1/jobs/{job_id}` (the most polled request), else None."""
    if scope["method"] != "GET":
        return None
    match = JOB_PATH.fullmatch(scope["path"])
    return match[1] if match else None


async def send_job(scope: Scope, send: Send, body: bytes, decision: RateDecision | None) -> None:
    """Answer a job GET that `AuthFirst` read (`AsyncReads.job_with_rate`) without routing it: the route
    (routes/jobs.py) is the same read, declares the operation in the spec and answers whatever is not found here."""
    scope["route"] = scope["app"].state.job_route  # the metrics' route label, without matching every route
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if decision is not None:
        headers += [(k.encode(), v.encode()) for k, v in decision.headers().items()]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})
