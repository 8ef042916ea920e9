"""Fair admission into RQ: a tenant's excess jobs wait outside RQ, so its backlog never buries another tenant's job.

RQ serves each queue first-in first-out. Left alone, one tenant's 300 jobs all sit ahead of another tenant's one.
So every job goes through a *line* (one per queue and tenant) before it reaches RQ:

- `pending` (a sorted set per line): jobs not yet in RQ, ordered by the job's `priority` (higher first), then by
  submission order; a preempted or recovered attempt (`front`) goes ahead of them all, and to the front of RQ.
- `queued` (a sorted set per line): jobs admitted into RQ, not yet taken by a worker. At most `WAITING_PER_LINE`
  (one) per line, so RQ's list holds at most one waiting job per tenant: a job of another tenant waits behind at
  most one job of each tenant per worker turn (round robin across tenants, in arrival order).
- `slots` (a sorted set per tenant, training only): attempts admitted into RQ or running. `max_running_jobs`
  (TenantLimits) caps it, so admitted + running never exceeds the limit, and a finishing job admits the next.
- `lines`: every line with something pending or queued; the reconciler (jobs/reconcile.py) re-admits them, so a
  crash between two steps never strands a tenant.

Everything that moves a job between pending, RQ and the slots is one Lua script (ADMIT below, run by `enqueue`,
`take`, `release`, `withdraw` and `admit`), so two workers or API replicas never admit a job twice or lose one.
Writers: `core/queue.py` (enqueue, cancel), the worker parent (take when it dequeues, release when the horse is
gone) and the reconciler (repair). Key names live here, next to the scripts that are their only writers.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from redis import Redis
from redis.client import Pipeline

from ftjobs.core.keys import PREFIX

PRIORITY_MIN, PRIORITY_MAX = -10, 10  # JobCreate.priority's bounds (client/models/jobs.py)
WAITING_PER_LINE = 1  # RQ jobs waiting per (queue, tenant): one job turn per worker at most
BAND = 2**40  # score = band of the priority * BAND + submission sequence; exact in a double up to 2^53
NO_LIMIT = -1

LINES_KEY = f"{PREFIX}:adm:lines"  # set of line members "<kind>|<queue>|<tenant>", kind t (training) or v
SEQ_KEY = f"{PREFIX}:adm:seq"  # submission order, one counter per deployment
# KEYS[3] of a validation line (no running slots). A real key name, never written: an ACL limited to ftjobs'
# keys refuses a script given the empty key name.
NO_SLOTS_KEY = f"{PREFIX}:adm:no-slots"


def pending_key(queue: str, tenant: str) -> str:
    return f"{PREFIX}:adm:pending:{queue}|{tenant}"


def queued_key(queue: str, tenant: str) -> str:
    return f"{PREFIX}:adm:queued:{queue}|{tenant}"


def slots_key(tenant: str) -> str:
    return f"{PREFIX}:adm:slots:{tenant}"


def rq_queue_key(queue: str) -> str:
    """RQ's list for a queue (rq.Queue.key); admission pushes job ids onto it as RQ's own enqueue does."""
    return f"rq:queue:{queue}"


# The admission pass, shared by every script. KEYS: 1 pending, 2 queued, 3 slots (NO_SLOTS_KEY for validation lines),
# 4 RQ's list, 5 LINES_KEY. ARGV: 1 rq id (the script's subject, may be ""), 2 tenant's running limit (-1: none),
# 3 waiting cap, 4 now (unix s), 5 line member. Admits pending jobs, best first, while the line has fewer than the
# cap waiting in RQ (a `front` job, score < 0, ignores the cap) and the tenant's slots are under its limit.
ADMIT = """
local function admit()
  local limit, cap, now = tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
  local admitted = {}
  while true do
    local top = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
    if #top == 0 then break end
    local front = tonumber(top[2]) < 0
    if not front and redis.call('ZCARD', KEYS[2]) >= cap then break end
    if KEYS[3] ~= '""" + NO_SLOTS_KEY + """' and limit >= 0 and redis.call('ZCARD', KEYS[3]) >= limit then break end
    redis.call('ZREM', KEYS[1], top[1])
    if front then redis.call('LPUSH', KEYS[4], top[1]) else redis.call('RPUSH', KEYS[4], top[1]) end
    redis.call('ZADD', KEYS[2], now, top[1])
    if KEYS[3] ~= '""" + NO_SLOTS_KEY + """' then redis.call('ZADD', KEYS[3], now, top[1]) end
    admitted[#admitted + 1] = top[1]
  end
  if redis.call('ZCARD', KEYS[1]) + redis.call('ZCARD', KEYS[2]) == 0 then
    redis.call('SREM', KEYS[5], ARGV[5])
  else
    redis.call('SADD', KEYS[5], ARGV[5])
  end
  return admitted
end
"""

# enqueue: ARGV 6 = score. The job joins its line's pending set (NX: an id already there keeps its place).
ENQUEUE = ADMIT + """
if ARGV[1] ~= '' and not redis.call('ZSCORE', KEYS[2], ARGV[1]) then
  redis.call('ZADD', KEYS[1], 'NX', ARGV[6], ARGV[1])
end
return admit()
"""

# take: a worker dequeued ARGV[1] from RQ: it no longer waits; a training attempt holds its slot until released.
TAKE = ADMIT + """
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[1], ARGV[1])
if KEYS[3] ~= '""" + NO_SLOTS_KEY + """' then redis.call('ZADD', KEYS[3], ARGV[4], ARGV[1]) end
return admit()
"""

# release / withdraw: ARGV[1] is gone (finished, died, or cancelled): out of every set and RQ's list.
RELEASE = ADMIT + """
if ARGV[1] ~= '' then
  redis.call('ZREM', KEYS[1], ARGV[1])
  redis.call('ZREM', KEYS[2], ARGV[1])
  if KEYS[3] ~= '""" + NO_SLOTS_KEY + """' then redis.call('ZREM', KEYS[3], ARGV[1]) end
  redis.call('LREM', KEYS[4], 0, ARGV[1])
end
return admit()
"""

LimitOf = Callable[[str], int | None]  # tenant -> max_running_jobs (None: no limit)


@dataclass(frozen=True)
class Line:
    """One queue's jobs of one tenant; `training` lines count against the tenant's running limit."""

    queue: str
    tenant: str
    training: bool

    @property
    def member(self) -> str:
        return f"{'t' if self.training else 'v'}|{self.queue}|{self.tenant}"

    @classmethod
    def parse(cls, member: str) -> Line:
        kind, queue, tenant = member.split("|")
        return cls(queue, tenant, kind == "t")


def score(priority: int, seq: int, front: bool = False) -> int:
    """Lower goes first: front jobs (negative), then priority 10 down to -10, each in submission order."""
    if front:
        return -BAND + seq
    band = PRIORITY_MAX - max(PRIORITY_MIN, min(PRIORITY_MAX, priority))
    return band * BAND + seq


class Admission:
    """The admission scripts on one connection; `limit_of(tenant)` is the tenant's current max_running_jobs."""

    def __init__(self, redis: Redis, limit_of: LimitOf) -> None:
        self.redis = redis
        self.limit_of = limit_of
        self._enqueue = redis.register_script(ENQUEUE)
        self._take = redis.register_script(TAKE)
        self._release = redis.register_script(RELEASE)

    def _keys(self, line: Line) -> list[str]:
        slots = slots_key(line.tenant) if line.training else NO_SLOTS_KEY
        return [pending_key(line.queue, line.tenant), queued_key(line.queue, line.tenant), slots,
                rq_queue_key(line.queue), LINES_KEY]

    def _args(self, line: Line, rq_id: str, *extra: Any) -> list[Any]:
        limit = self.limit_of(line.tenant) if line.training else None
        return [rq_id, NO_LIMIT if limit is None else limit, WAITING_PER_LINE, time.time(), line.member, *extra]

    def enqueue(self, line: Line, rq_id: str, priority: int, *, front: bool, pipe: Pipeline) -> None:
        """Add `rq_id` (its RQ job saved in the same transaction `pipe`) to its line, and admit what fits."""
        seq = int(self.redis.incr(SEQ_KEY))  # type: ignore[arg-type]
        self._enqueue(keys=self._keys(line), args=self._args(line, rq_id, score(priority, seq, front)), client=pipe)

    def take(self, line: Line, rq_id: str) -> list[str]:
        """A worker dequeued `rq_id` (before its horse forks): admit the line's next job. -> ids admitted."""
        return _texts(self._take(keys=self._keys(line), args=self._args(line, rq_id)))

    def release(self, line: Line, rq_id: str) -> list[str]:
        """`rq_id` is finished, dead or cancelled: free its place and its slot, admit what now fits."""
        return _texts(self._release(keys=self._keys(line), args=self._args(line, rq_id)))

    def admit(self, line: Line) -> list[str]:
        """Admit what fits (the reconciler's repair; idempotent)."""
        return self.release(line, "")

    def is_pending(self, queue: str, tenant: str, rq_id: str) -> bool:
        return self.redis.zscore(pending_key(queue, tenant), rq_id) is not None

    def lines(self) -> list[Line]:
        return [Line.parse(_text(m)) for m in self.redis.smembers(LINES_KEY)]  # type: ignore[union-attr]

    def waiting(self, line: Line) -> dict[str, float]:
        """The line's jobs admitted into RQ and not yet taken: {rq id: when admitted}."""
        return self._scored(queued_key(line.queue, line.tenant))

    def slots(self, tenant: str) -> dict[str, float]:
        """The tenant's training attempts admitted or running: {rq id: when admitted or taken}."""
        return self._scored(slots_key(tenant))

    def _scored(self, key: str) -> dict[str, float]:
        pairs: list[tuple[bytes, float]] = self.redis.zrange(key, 0, -1, withscores=True)  # type: ignore[assignment]
        return {_text(m): float(s) for m, s in pairs}

    def pending(self, line: Line) -> list[str]:
        """The line's jobs outside RQ, next first."""
        return [_text(m) for m in self.redis.zrange(pending_key(line.queue, line.tenant), 0, -1)]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _texts(values: Any) -> list[str]:
    return [_text(v) for v in values or []]
