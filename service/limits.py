"""Per-tenant limits at the API: the request rate (a GCRA in Redis, shared by every replica) and the quotas
(active jobs, files and bytes stored, upload bytes per UTC day), each over limit a 429 naming the limit.

The limits come from `core/tenants.py` (deployment defaults, per-tenant overrides). Headers on a 429 (and, for
the request rate, on every /v1 response): `Retry-After` (seconds), `x-ratelimit-limit` (the limit: the burst
for the request rate, the quota otherwise), `x-ratelimit-remaining` (what is left now) and `x-ratelimit-reset`
(seconds until the limit is whole again, or until it may have room).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import cast

from redis import Redis

from ftjobs.core import keys
from ftjobs.core.tenants import TenantLimits
from ftjobs.service.errors import QuotaExceeded, RateLimited

QUOTA_RETRY_AFTER_S = 30  # active jobs, files, bytes stored: room comes when a job ends or a file goes

# GCRA (the generic cell rate algorithm): the key holds the theoretical arrival time (TAT, microseconds of Redis's
# clock, so every replica agrees); a request is allowed while TAT - now stays within the burst.
#   KEYS[1] = `keys.rate_key(tenant)`; ARGV[1] = microseconds per request (1e6 / rate), ARGV[2] = burst
# Returns {allowed 0/1, remaining, retry_after_us, reset_after_us}.
RATE_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local window = interval * tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + interval
local over = new_tat - now - window
if over > 0 then
  return {0, 0, over, tat - now}
end
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.ceil((new_tat - now) / 1000))
return {1, math.floor(-over / interval), 0, new_tat - now}
"""

# The tenant's stored bytes, computed from its file records the first time (files stored before the counter
# existed), then kept by ADD_FILE. KEYS[1] = usage hash, KEYS[2] = the tenant's files; ARGV[1] = file key prefix.
_STORED_BYTES = """
local stored = redis.call('HGET', KEYS[1], 'stored_bytes')
if stored then
  stored = tonumber(stored)
else
  stored = 0
  for _, id in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
    local raw = redis.call('GET', ARGV[1] .. id)
    if raw then stored = stored + (cjson.decode(raw)['bytes'] or 0) end
  end
  redis.call('HSET', KEYS[1], 'stored_bytes', string.format('%.0f', stored))
end
"""

# USAGE: {files, stored_bytes, uploaded bytes today}. KEYS: usage hash, files, today's upload key; ARGV[1] as above.
USAGE = (
    _STORED_BYTES
    + """
return {redis.call('ZCARD', KEYS[2]), stored, tonumber(redis.call('GET', KEYS[3]) or 0)}
"""
)

# ADD_FILE: store a file record if the tenant's file count and stored bytes stay within its limits, and count it.
#   KEYS: usage hash, files, today's upload key, the file's key
#   ARGV[1] = file key prefix, ARGV[2] = file id, ARGV[3] = its bytes, ARGV[4] = the FileObject JSON,
#   ARGV[5] = max_files ("" = none), ARGV[6] = max_stored_bytes ("" = none), ARGV[7] = TTL of the day's key
# Returns {1, ""} when stored, {0, limit name} when a limit refused it.
ADD_FILE = (
    _STORED_BYTES
    + """
local bytes = tonumber(ARGV[3])
if ARGV[5] ~= '' and redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[5]) then return {0, 'max_files'} end
if ARGV[6] ~= '' and stored + bytes > tonumber(ARGV[6]) then return {0, 'max_stored_bytes'} end
redis.call('SET', KEYS[4], ARGV[4])
redis.call('ZADD', KEYS[2], 0, ARGV[2])
redis.call('HINCRBY', KEYS[1], 'stored_bytes', ARGV[3])
redis.call('INCRBY', KEYS[3], ARGV[3])
redis.call('EXPIRE', KEYS[3], ARGV[7])
return {1, ''}
"""
)

# REMOVE_FILE: forget a file record and give its bytes (and, by the ZREM, its count) back to the tenant's quotas.
#   KEYS: usage hash, files, the file's key; ARGV[1] = file key prefix, ARGV[2] = file id
# Returns the bytes given back, or -1 when there was no such file.
REMOVE_FILE = (
    _STORED_BYTES
    + """
local raw = redis.call('GET', KEYS[3])
if not raw then return -1 end
local bytes = cjson.decode(raw)['bytes'] or 0
redis.call('DEL', KEYS[3])
redis.call('ZREM', KEYS[2], ARGV[2])
redis.call('HINCRBY', KEYS[1], 'stored_bytes', -bytes)
return bytes
"""
)


@dataclass(frozen=True)
class RateDecision:
    """One request's verdict from the rate limiter."""

    allowed: bool
    limit: int  # the burst: requests allowed at once
    remaining: int
    retry_after_s: float
    reset_s: float

    def headers(self) -> dict[str, str]:
        return ratelimit_headers(self.limit, self.remaining, self.reset_s)

    def error(self) -> RateLimited:
        retry = max(1, math.ceil(self.retry_after_s))
        return RateLimited(
            f"Too many requests: over requests_per_second for this tenant; retry in {retry} s.",
            param="requests_per_second",
            headers={"Retry-After": str(retry), **self.headers()},
        )


def ratelimit_headers(limit: int, remaining: int, reset_s: float) -> dict[str, str]:
    return {
        "x-ratelimit-limit": str(limit),
        "x-ratelimit-remaining": str(max(0, remaining)),
        "x-ratelimit-reset": str(max(0, math.ceil(reset_s))),
    }


def burst_of(limits: TenantLimits) -> int:
    """Requests allowed at once: `burst`, or twice the rate (at least 1)."""
    rate = limits.requests_per_second or 0
    return limits.burst or max(1, math.ceil(2 * rate))


class RateLimiter:
    """Per-tenant request rate, checked by `AuthFirst` right after the key (before any body is read)."""

    def __init__(self, redis: Redis) -> None:
        self._script = redis.register_script(RATE_SCRIPT)

    def check(self, tenant: str, limits: TenantLimits) -> RateDecision | None:
        """The verdict for one more request; None when the tenant has no rate limit."""
        if limits.requests_per_second is None:
            return None
        burst = burst_of(limits)
        interval_us = max(1, round(1_000_000 / limits.requests_per_second))
        allowed, remaining, retry_us, reset_us = cast(
            list[int], self._script(keys=[keys.rate_key(tenant)], args=[interval_us, burst])
        )
        return RateDecision(bool(allowed), burst, int(remaining), retry_us / 1e6, reset_us / 1e6)


# --------------------------------------------------------------------------- quotas


def quota_exceeded(name: str, limit: int, message: str, retry_after_s: float = QUOTA_RETRY_AFTER_S) -> QuotaExceeded:
    """A 429 naming the limit (`param`), with Retry-After and x-ratelimit-* headers for it."""
    retry = max(1, math.ceil(retry_after_s))
    return QuotaExceeded(
        f"{message} (limit {name} = {limit}).",
        param=name,
        headers={"Retry-After": str(retry), **ratelimit_headers(limit, 0, retry)},
    )


def utc_day(now: float | None = None) -> str:
    return datetime.fromtimestamp(time.time() if now is None else now, UTC).strftime("%Y%m%d")


def seconds_to_utc_midnight(now: float | None = None) -> float:
    moment = datetime.fromtimestamp(time.time() if now is None else now, UTC)
    midnight = (moment + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return (midnight - moment).total_seconds()


@dataclass(frozen=True)
class Usage:
    files: int
    stored_bytes: int
    uploaded_today: int


def file_usage_keys(tenant: str) -> list[str]:
    """KEYS[1..3] of USAGE and ADD_FILE."""
    return [keys.tenant_usage_key(tenant), keys.tenant_files_key(tenant), keys.upload_day_key(tenant, utc_day())]


def check_upload(usage: Usage, limits: TenantLimits, declared: int | None, overhead: int) -> None:
    """Before an upload's body is read: the file count, and its Content-Length (less `overhead`, the multipart
    framing) against the bytes left today and the bytes left to store; QuotaExceeded when either has no room."""
    size = max(0, declared - overhead) if declared is not None else 0
    if limits.max_files is not None and usage.files >= limits.max_files:
        raise quota_exceeded("max_files", limits.max_files, f"This tenant stores {usage.files} files already")
    if (cap := limits.max_upload_bytes_per_day) is not None and _no_room(usage.uploaded_today, size, cap):
        left = max(0, cap - usage.uploaded_today)
        raise quota_exceeded(
            "max_upload_bytes_per_day",
            cap,
            f"This upload does not fit in the {left} bytes this tenant may still upload today (UTC)",
            seconds_to_utc_midnight(),
        )
    if (cap := limits.max_stored_bytes) is not None and _no_room(usage.stored_bytes, size, cap):
        left = max(0, cap - usage.stored_bytes)
        raise quota_exceeded(
            "max_stored_bytes", cap, f"This upload does not fit in the {left} bytes this tenant may still store"
        )


def _no_room(used: int, size: int, cap: int) -> bool:
    """`size` more bytes do not fit under `cap` (an unknown size needs at least one byte of room)."""
    return used + size > cap if size else used >= cap
