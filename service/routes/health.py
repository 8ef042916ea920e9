"""Liveness and readiness probes."""

from __future__ import annotations

from fastapi import APIRouter

from ftjobs.client.models import Health
from ftjobs.service.deps import RedisDep
from ftjobs.service.errors import RedisUnavailable, error_responses
from ftjobs.service.version import API_VERSION

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> Health:
    """Liveness: the process serves requests (Redis is not checked)."""
    return Health(status="ok", version=API_VERSION)


@router.get("/readyz", responses=error_responses(RedisUnavailable))
def readyz(redis: RedisDep) -> Health:
    """Readiness: Redis answers a PING."""
    redis.ping()  # a ConnectionError/TimeoutError becomes 503 + Retry-After
    return Health(status="ok", redis=True, version=API_VERSION)
