"""Retention: a finished job's event and metric streams move from Redis to the artifact store after a while.

Redis keeps what lists and lookups need (the job hash, the tenant's indexes); the streams, most of a job's
bytes, are written to the store as JSON lines (`events.jsonl` and `metrics.jsonl` next to the job's `job.json`)
`retention_s` after the job ended, then deleted from Redis. The job hash gets `archived_at`, and the readers
(`service/store.py`, `service/openai_jobs.py`) page over the archive instead, by the same stream ids.

Which jobs are due: GUARDED_WRITE (core/keys.py) adds every job that turns terminal to RETENTION_DUE_KEY, scored by
when it ended; `Retention.backfill` adds the finished jobs of a deployment older than that, once. `Retention.sweep`
runs in every worker's reconciler thread (jobs/reconcile.py) under one Redis lock, in batches: one worker archives
at a time, and the ARCHIVE script makes each job's move happen once (it deletes the streams only if nothing was
appended since they were read, and only while the job is still terminal and not archived).
"""

from __future__ import annotations

import bisect
import functools
import json
import logging
import time
from collections.abc import Iterator
from typing import Any, Literal, cast

from redis import Redis
from redis.exceptions import LockError

from ftjobs.core.keys import (
    PREFIX,
    RETENTION_DUE_KEY,
    TERMINAL,
    JobField,
    events_key,
    job_dir,
    job_key,
    metrics_key,
    tenant_jobs_key,
)
from ftjobs.core.records import as_text, decode_entry
from ftjobs.core.storage import Storage

log = logging.getLogger("ftjobs.retention")

Kind = Literal["events", "metrics"]
Entry = tuple[str, dict[str, Any]]  # (stream id, the entry's document without its id)

ARCHIVED_FIELD = "archived_at"  # job-hash field (JSON number: unix seconds) once its streams are in the store
LOCK_KEY = f"{PREFIX}:retention:lock"
BACKFILLED_KEY = f"{PREFIX}:retention:backfilled"
LOCK_TTL_S = 120  # a dead archiver's lock lapses after this; a live one renews it between batches
BATCH = 100  # jobs per batch (one ZRANGEBYSCORE, then each job's streams read, written, deleted)
SWEEP_BUDGET_S = 5.0  # seconds of archiving per sweep at most, so the reconciler's other work is not held up
READ_CHUNK = 10_000  # stream entries per XRANGE


def archive_path(tenant: str, job_id: str, kind: Kind) -> str:
    """The archived stream in the store: JSON lines, each the entry's document with its stream `id`."""
    return f"{job_dir(tenant, job_id)}/{kind}.jsonl"


# ARCHIVE: the streams of one job leave Redis, atomically, only if what was archived is still all there is.
#   KEYS[1] = job hash, KEYS[2] = events stream, KEYS[3] = metrics stream, KEYS[4] = RETENTION_DUE_KEY
#   ARGV[1], ARGV[2] = the last event id and last metric id archived ("" = none), ARGV[3] = archived_at (JSON),
#   ARGV[4] = the job's member of RETENTION_DUE_KEY
# Returns 1 when archived, 0 when the job is gone, not terminal or already archived (dropped from the due set),
# -1 when a stream grew since it was read (left due: the next sweep archives it again).
ARCHIVE = (
    """
local status = redis.call('HGET', KEYS[1], 'status')
local ended = {"""
    + ", ".join(f"{s} = true" for s in TERMINAL)
    + """}
if not status or not ended[cjson.decode(status)] or redis.call('HEXISTS', KEYS[1], '"""
    + ARCHIVED_FIELD
    + """') == 1 then
  redis.call('ZREM', KEYS[4], ARGV[4])
  return 0
end
for i = 2, 3 do
  local last = redis.call('XREVRANGE', KEYS[i], '+', '-', 'COUNT', 1)
  local id = ''
  if last[1] then id = last[1][1] end
  if id ~= ARGV[i - 1] then return -1 end
end
redis.call('HSET', KEYS[1], '"""
    + ARCHIVED_FIELD
    + """', ARGV[3])
redis.call('DEL', KEYS[2], KEYS[3])
redis.call('ZREM', KEYS[4], ARGV[4])
return 1
"""
)


def stream_id(text: str) -> tuple[int, int]:
    """A stream id `<ms>[-<seq>]` as numbers, for ordering (the cursor was checked by the caller)."""
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


# ----------------------------------------------------------------------------- reading an archive


def is_archived(redis: Redis, tenant: str, job_id: str) -> bool:
    """Whether the job's streams were moved to the store."""
    return bool(redis.hexists(job_key(tenant, job_id), ARCHIVED_FIELD))


@functools.lru_cache(maxsize=8)  # archives never change once written; pages of one job come in runs
def _load(storage: Storage, rel: str) -> tuple[list[tuple[int, int]], list[Entry]]:
    """An archive's entries in stream order, with their ids as numbers (for bisecting); none when absent."""
    try:
        with storage.open(rel) as handle:
            lines = handle.read().splitlines()
    except FileNotFoundError:
        return [], []
    entries: list[Entry] = []
    for line in lines:
        doc = json.loads(line)
        entries.append((str(doc.pop("id")), doc))
    return [stream_id(sid) for sid, _ in entries], entries


def archived_after(storage: Storage, tenant: str, job_id: str, kind: Kind, cursor: str | None) -> list[Entry]:
    """Every entry of an archived stream after `cursor` (all of them for None), in order."""
    ids, entries = _load(storage, archive_path(tenant, job_id, kind))
    return entries[0 if cursor is None else bisect.bisect_right(ids, stream_id(cursor)) :]


def archived_page(
    redis: Redis,
    storage: Storage,
    tenant: str,
    job_id: str,
    kind: Kind,
    cursor: str | None,
    limit: int,
    newest_first: bool = False,
) -> tuple[list[Entry], bool]:
    """A page of an archived stream as XRANGE (ids after `cursor`) or, `newest_first`, XREVRANGE (ids before it)
    would give it: (entries, has_more); none when the job is not archived (its streams are still in Redis)."""
    if not is_archived(redis, tenant, job_id):
        return [], False
    ids, entries = _load(storage, archive_path(tenant, job_id, kind))
    if newest_first:
        end = len(ids) if cursor is None else bisect.bisect_left(ids, stream_id(cursor))
        picked = entries[max(0, end - limit - 1) : end][::-1]
    else:
        start = 0 if cursor is None else bisect.bisect_right(ids, stream_id(cursor))
        picked = entries[start : start + limit + 1]
    return picked[:limit], len(picked) > limit


# ----------------------------------------------------------------------------- archiving


class Retention:
    """Archives the streams of jobs that ended more than `retention_s` ago (0: never)."""

    def __init__(self, redis: Redis, storage: Storage, retention_s: float) -> None:
        self.redis = redis
        self.storage = storage
        self.retention_s = retention_s
        self._archive = redis.register_script(ARCHIVE)

    def sweep(self, now: float | None = None, budget_s: float = SWEEP_BUDGET_S) -> int:
        """Archive the due jobs (for about `budget_s` seconds) if no other process is; returns how many were."""
        if self.retention_s <= 0:
            return 0
        lock = self.redis.lock(LOCK_KEY, timeout=LOCK_TTL_S, blocking=False)
        if not lock.acquire():
            return 0  # another worker is archiving
        archived = 0
        try:
            cutoff = (time.time() if now is None else now) - self.retention_s
            stop_at = time.monotonic() + budget_s
            while time.monotonic() < stop_at:
                due = cast(list[bytes], self.redis.zrangebyscore(RETENTION_DUE_KEY, "-inf", cutoff, 0, BATCH))
                if not due:
                    break
                tried = 0
                for raw in due:
                    tenant, _, job_id = as_text(raw).partition("|")
                    result = self.archive_job(tenant, job_id)
                    archived += result == 1
                    tried += result != -1
                if tried == 0:
                    break  # every job of the batch is still being written to: the next sweep tries again
                lock.reacquire()  # ours for another LOCK_TTL_S
        except LockError:
            log.warning("the retention lock lapsed mid-sweep; stopping this sweep")
        finally:
            try:
                lock.release()
            except LockError:
                pass
        if archived:
            log.info("archived the events and metrics of %d finished jobs", archived)
        return archived

    def archive_job(self, tenant: str, job_id: str) -> int:
        """Move one finished job's streams to the store: 1 done, 0 nothing to do, -1 a stream grew (retry later)."""
        member = f"{tenant}|{job_id}"
        status, archived = self.redis.hmget(job_key(tenant, job_id), [JobField.status, ARCHIVED_FIELD])
        if status is None or json.loads(status) not in TERMINAL or archived is not None:
            self.redis.zrem(RETENTION_DUE_KEY, member)
            return 0
        last: list[str] = []
        for kind, key in (("events", events_key(tenant, job_id)), ("metrics", metrics_key(tenant, job_id))):
            entries = list(self._read(key))
            if entries:  # written whole, before anything leaves Redis (a crash here leaves the job due, Redis intact)
                lines = "".join(json.dumps({"id": sid, **doc}) + "\n" for sid, doc in entries)
                self.storage.write_bytes(archive_path(tenant, job_id, cast(Kind, kind)), lines.encode())
            last.append(entries[-1][0] if entries else "")  # an absent archive reads as no entries
        keys = [job_key(tenant, job_id), events_key(tenant, job_id), metrics_key(tenant, job_id), RETENTION_DUE_KEY]
        return int(self._archive(keys=keys, args=[*last, json.dumps(time.time()), member]))

    def _read(self, key: str) -> Iterator[Entry]:
        """Every entry of a stream, in order, READ_CHUNK at a time."""
        low = "-"
        while True:
            chunk = cast(list[tuple[bytes, dict[bytes, bytes]]], self.redis.xrange(key, low, "+", READ_CHUNK))
            for sid, fields in chunk:
                yield as_text(sid), decode_entry(fields)
            if len(chunk) < READ_CHUNK:
                return
            low = f"({as_text(chunk[-1][0])}"

    def backfill(self) -> int:
        """Once per deployment: make the jobs that ended before RETENTION_DUE_KEY existed due (scored by their
        `finished_at`); returns how many were added."""
        if self.redis.exists(BACKFILLED_KEY):
            return 0
        added = 0
        for index in self.redis.scan_iter(match=tenant_jobs_key("*"), _type="ZSET"):
            tenant = as_text(index).split(":")[2]
            job_ids = [as_text(i) for i in cast(list[bytes], self.redis.zrange(index, 0, -1))]
            for start in range(0, len(job_ids), 1000):
                batch = job_ids[start : start + 1000]
                pipe = self.redis.pipeline(transaction=False)
                for job_id in batch:
                    pipe.hmget(job_key(tenant, job_id), [JobField.status, JobField.finished_at, ARCHIVED_FIELD])
                due: dict[str, float] = {}
                for job_id, (status, finished, archived) in zip(batch, pipe.execute(), strict=True):
                    if status is not None and json.loads(status) in TERMINAL and archived is None:
                        due[f"{tenant}|{job_id}"] = float(json.loads(finished or "0") or 0)
                if due:
                    added += int(self.redis.zadd(RETENTION_DUE_KEY, due, nx=True))  # type: ignore[arg-type]
        self.redis.set(BACKFILLED_KEY, json.dumps(time.time()), nx=True)
        return added
