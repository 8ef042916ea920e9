"""The webhook outbox and delivery queue in Redis, in the layout of core/keys.py: what the dispatcher
(launch/webhooks.py) works from and what the API (service/webhooks.py) reads back.

A job's change into one of `keys.WEBHOOK_STATUSES` appends {tenant, job, status} to the outbox stream inside
GUARDED_WRITE, so a transition and its event are one write. Dispatchers share the outbox through one consumer
group: an entry is read by one of them (XREADGROUP), fanned out into one delivery per endpoint that wants it and
acknowledged in the same MULTI; an entry a crashed dispatcher read but never acknowledged is taken over once it
sat idle for a lease (XAUTOCLAIM). Deliveries wait in one sorted set by due time. Claiming one moves it to the
end of a lease, so an attempt cut short by a crash is claimed again; each attempt's outcome goes to the
endpoint's bounded history and either ends the delivery (2xx, or no retry left) or schedules the next retry.
Delivery is at least once: a receiver dedupes by the event id (the `webhook-id` header).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, cast

from redis import Redis
from redis.exceptions import ResponseError

from ftjobs.client.models.webhooks import EVENT_TYPE_PREFIX, WebhookDelivery, WebhookEndpointCreated
from ftjobs.core import keys
from ftjobs.core.records import as_text

HISTORY_MAXLEN = 100  # attempts kept per endpoint (`GET /v1/webhooks/{id}/deliveries`)

# Claim up to ARGV[3] deliveries due by ARGV[1]: each is moved to ARGV[2] (the end of the claimer's lease).
#   KEYS[1] = WEBHOOK_DUE_KEY; ARGV[4] = `webhook_delivery_key("")` (the prefix of delivery hashes)
# Returns {{id, json, attempts}, ...}; a due id whose hash is gone is dropped.
CLAIM_DUE = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
local out = {}
for _, id in ipairs(ids) do
  local rec = redis.call('HMGET', ARGV[4] .. id, 'json', 'attempts')
  if rec[1] then
    redis.call('ZADD', KEYS[1], 'XX', ARGV[2], id)
    table.insert(out, {id, rec[1], rec[2]})
  else
    redis.call('ZREM', KEYS[1], id)
  end
end
return out
"""

# Record attempt ARGV[2] of delivery ARGV[1] to endpoint ARGV[3]: append ARGV[4] to its history, then end the
# delivery (ARGV[5] = "") or make it due again at ARGV[5]. Only the claimer of the current attempt moves it on
# (a stale one, whose lease ran out and whose delivery was claimed again, only adds to the history).
#   KEYS = WEBHOOK_DUE_KEY, the delivery hash, the tenant's endpoints, the endpoint's history
# Returns 1 if the delivery moved on, 0 if not (a stale attempt, or the endpoint is gone: then the delivery too).
FINISH = (
    """
if redis.call('HEXISTS', KEYS[3], ARGV[3]) == 0 then
  redis.call('DEL', KEYS[2])
  redis.call('ZREM', KEYS[1], ARGV[1])
  return 0
end
redis.call('XADD', KEYS[4], 'MAXLEN', '"""
    + str(HISTORY_MAXLEN)
    + """', '*', '"""
    + keys.STREAM_FIELD
    + """', ARGV[4])
if tonumber(redis.call('HGET', KEYS[2], 'attempts') or '-1') ~= tonumber(ARGV[2]) - 1 then return 0 end
if ARGV[5] == '' then
  redis.call('DEL', KEYS[2])
  redis.call('ZREM', KEYS[1], ARGV[1])
else
  redis.call('HSET', KEYS[2], 'attempts', ARGV[2])
  redis.call('ZADD', KEYS[1], ARGV[5], ARGV[1])
end
return 1
"""
)


@dataclass(frozen=True)
class Delivery:
    """One event on its way to one endpoint; `attempts` made so far (this claim makes attempt `attempts + 1`)."""

    id: str
    tenant: str
    endpoint_id: str
    event_id: str
    type: str
    job_id: str
    body: str
    attempts: int

    @property
    def attempt(self) -> int:
        return self.attempts + 1


def event_id(entry_id: str) -> str:
    """The event's id from its outbox entry id: `evt-` + 12 hex of the ms + 8 hex of the sequence."""
    ms, _, seq = entry_id.partition("-")
    return f"evt-{int(ms):012x}{int(seq or 0):08x}"


def event_body(entry_id: str, status: str, job_id: str, job: dict[str, Any]) -> str:
    """The JSON POSTed for an outbox entry (the same bytes on every retry): {id, type, created_at, data}."""
    request = job.get(keys.JobField.request) or {}
    data: dict[str, Any] = {"id": job_id, "object": "fine_tuning.job", "status": status}
    if job.get(keys.JobField.error):
        data["error"] = job[keys.JobField.error]
    if request.get("metadata"):
        data["metadata"] = request["metadata"]
    created_at = int(entry_id.partition("-")[0]) // 1000  # the stream id is the time of the status change
    event = {"id": event_id(entry_id), "type": EVENT_TYPE_PREFIX + status, "created_at": created_at, "data": data}
    return json.dumps(event, separators=(",", ":"))


def add_event(redis: Redis, tenant: str, type_: str, job_id: str, data: dict[str, Any]) -> bool:
    """Queue an event that is not a job's status change (`monitor.degraded`: core/monitors.py) for the tenant's
    endpoints; like a status change, only while the tenant has endpoints. Returns whether it was queued."""
    if not redis.hlen(keys.webhooks_key(tenant)):
        return False
    entry = {"tenant": tenant, "job": job_id, "type": type_, "data": json.dumps(data, separators=(",", ":"))}
    redis.xadd(keys.WEBHOOK_OUTBOX_KEY, entry)  # type: ignore[arg-type]
    return True


def other_event_body(entry_id: str, type_: str, data: dict[str, Any]) -> str:
    """The JSON POSTed for an `add_event` entry: {id, type, created_at, data} as for a status change."""
    created_at = int(entry_id.partition("-")[0]) // 1000
    event = {"id": event_id(entry_id), "type": type_, "created_at": created_at, "data": data}
    return json.dumps(event, separators=(",", ":"))


def endpoints(redis: Redis, tenant: str) -> list[WebhookEndpointCreated]:
    """The tenant's endpoints with their secrets, newest first."""
    raw = cast(dict[bytes, bytes], redis.hgetall(keys.webhooks_key(tenant)))
    found = [WebhookEndpointCreated.model_validate_json(v) for v in raw.values()]
    return sorted(found, key=lambda e: e.id, reverse=True)


class WebhookQueue:
    """The outbox and the delivery queue as one dispatcher (`consumer`) sees them."""

    def __init__(self, redis: Redis, consumer: str, lease_s: float) -> None:
        self.redis = redis
        self.consumer = consumer
        self.lease_s = lease_s
        self._claim_due = redis.register_script(CLAIM_DUE)
        self._finish = redis.register_script(FINISH)

    def ensure_group(self) -> None:
        """Create the dispatchers' group (from the outbox's first entry) unless it exists."""
        try:
            self.redis.xgroup_create(keys.WEBHOOK_OUTBOX_KEY, keys.WEBHOOK_GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def read(self, block_ms: int, count: int = 100) -> list[tuple[str, dict[str, str]]]:
        """Outbox entries to fan out: first those a crashed peer left idle past the lease, then new ones (waiting
        up to `block_ms` for one)."""
        reply = cast(
            list[Any],
            self.redis.xautoclaim(
                keys.WEBHOOK_OUTBOX_KEY, keys.WEBHOOK_GROUP, self.consumer, int(self.lease_s * 1000), "0-0", count
            ),
        )
        entries = cast(list[tuple[bytes, dict[bytes, bytes]]], list(reply[1]))
        if not entries:
            streams = cast(
                list[tuple[bytes, list[tuple[bytes, dict[bytes, bytes]]]]],
                self.redis.xreadgroup(
                    keys.WEBHOOK_GROUP, self.consumer, {keys.WEBHOOK_OUTBOX_KEY: ">"}, count=count, block=block_ms
                ),
            )
            entries = [e for _, stream_entries in streams or [] for e in stream_entries]
        return [
            (as_text(sid), {as_text(k): as_text(v) for k, v in fields.items()})
            for sid, fields in entries
            if fields  # an entry trimmed while pending comes back empty: nothing to send
        ]

    def fan_out(self, entry_id: str, fields: dict[str, str], now: float) -> int:
        """One delivery per endpoint that wants the entry's event, due now, and the entry acknowledged: one MULTI.
        Returns how many deliveries were scheduled."""
        tenant, job_id, status = fields.get("tenant", ""), fields.get("job", ""), fields.get("status", "")
        type_ = fields.get("type") or EVENT_TYPE_PREFIX + status  # an `add_event` entry names its own type
        wanted = [e for e in endpoints(self.redis, tenant) if not e.event_types or type_ in e.event_types]
        pipe = self.redis.pipeline(transaction=True)
        if wanted:
            if "data" in fields:
                body = other_event_body(entry_id, type_, json.loads(fields["data"]))
            else:
                names = (keys.JobField.request, keys.JobField.error)
                raw = self.redis.hmget(keys.job_key(tenant, job_id), names)
                job = {str(n): json.loads(value) for n, value in zip(names, raw, strict=True) if value is not None}
                body = event_body(entry_id, status, job_id, job)
            for endpoint in wanted:
                delivery_id = f"{event_id(entry_id)}.{endpoint.id}"
                record = {"tenant": tenant, "endpoint": endpoint.id, "event": event_id(entry_id)}
                record.update({"type": type_, "job": job_id, "body": body})
                pipe.hsetnx(keys.webhook_delivery_key(delivery_id), "json", json.dumps(record))
                pipe.hsetnx(keys.webhook_delivery_key(delivery_id), "attempts", 0)
                pipe.zadd(keys.WEBHOOK_DUE_KEY, {delivery_id: now}, nx=True)
        pipe.xack(keys.WEBHOOK_OUTBOX_KEY, keys.WEBHOOK_GROUP, entry_id)
        pipe.execute()
        return len(wanted)

    def claim_due(self, now: float, limit: int) -> list[Delivery]:
        """Up to `limit` deliveries due by `now`, each leased to us until now + lease_s."""
        if limit <= 0:
            return []
        rows = cast(
            list[list[bytes]],
            self._claim_due(
                keys=[keys.WEBHOOK_DUE_KEY], args=[now, now + self.lease_s, limit, keys.webhook_delivery_key("")]
            ),
        )
        claimed = []
        for delivery_id, raw, attempts in rows:
            record = json.loads(raw)
            claimed.append(
                Delivery(
                    id=as_text(delivery_id),
                    tenant=record["tenant"],
                    endpoint_id=record["endpoint"],
                    event_id=record["event"],
                    type=record["type"],
                    job_id=record["job"],
                    body=record["body"],
                    attempts=int(attempts or 0),
                )
            )
        return claimed

    def finish(self, delivery: Delivery, outcome: WebhookDelivery, next_due: float | None) -> bool:
        """Record the attempt in the endpoint's history; end the delivery (`next_due` None) or reschedule it."""
        entry = outcome.model_dump_json(exclude={"id"})
        moved = self._finish(
            keys=[
                keys.WEBHOOK_DUE_KEY,
                keys.webhook_delivery_key(delivery.id),
                keys.webhooks_key(delivery.tenant),
                keys.webhook_history_key(delivery.tenant, delivery.endpoint_id),
            ],
            args=[delivery.id, delivery.attempt, delivery.endpoint_id, entry, "" if next_due is None else next_due],
        )
        return bool(moved)

    def next_due(self) -> float | None:
        """When the earliest delivery is due (or its lease ends); None when none waits."""
        first = cast(list[tuple[bytes, float]], self.redis.zrange(keys.WEBHOOK_DUE_KEY, 0, 0, withscores=True))
        return float(first[0][1]) if first else None

    def trim(self) -> None:
        """Drop outbox entries every dispatcher is done with: older than the oldest unacknowledged or unread one."""
        groups = cast(list[dict[str, Any]], self.redis.xinfo_groups(keys.WEBHOOK_OUTBOX_KEY))
        group = next((g for g in groups if as_text(g["name"]) == keys.WEBHOOK_GROUP), None)
        if group is None:
            return
        pending = cast(dict[str, Any], self.redis.xpending(keys.WEBHOOK_OUTBOX_KEY, keys.WEBHOOK_GROUP))
        keep_from = pending["min"] if pending["pending"] else group["last-delivered-id"]
        self.redis.xtrim(keys.WEBHOOK_OUTBOX_KEY, minid=as_text(keep_from), approximate=False)
