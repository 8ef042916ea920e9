"""`GET /metrics`: Prometheus' text format (service/metrics.py). Outside /v1: no API key, no rate limit; when
FTJOBS_METRICS_TOKEN is set, a scraper presents it as a bearer token."""

from __future__ import annotations

import hmac

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool

from ftjobs.service.deps import SettingsDep
from ftjobs.service.errors import Unauthorized

router = APIRouter(tags=["health"])


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request, settings: SettingsDep) -> Response:
    """The process's HTTP figures and the deployment's job, queue and worker figures, read now."""
    if settings.metrics_token:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.encode(), settings.metrics_token.encode()):
            raise Unauthorized("/metrics needs the bearer token of FTJOBS_METRICS_TOKEN.")
    body = await run_in_threadpool(generate_latest, request.app.state.metrics)  # Redis reads: off the event loop
    return Response(body, media_type=CONTENT_TYPE_LATEST)
