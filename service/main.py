"""The FastAPI app factory: `create_app(settings)`; `uvicorn --factory ftjobs.service.main:app_from_env`."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute
from redis.asyncio import Redis as AsyncRedis

from ftjobs.core.logs import setup_logging
from ftjobs.core.queue import JobQueue, connect
from ftjobs.core.settings import Settings
from ftjobs.core.storage import Storage, sweep_folder
from ftjobs.core.tenants import TenantsSource
from ftjobs.service.deps import AsyncRateLimiter, AuthFirst
from ftjobs.service.errors import (
    InsufficientScope,
    InternalError,
    RateLimited,
    RedisUnavailable,
    Unauthorized,
    error_responses,
)
from ftjobs.service.handlers import DeclaredBodyLimit, install_error_handlers
from ftjobs.service.limits import RateLimiter
from ftjobs.service.links import add_links
from ftjobs.service.metrics import install_metrics
from ftjobs.service.reads import AsyncReads
from ftjobs.service.requestid import RequestIds
from ftjobs.service.routes import (
    admin,
    artifacts,
    dashboard,
    docs,
    evaluations,
    exports,
    files,
    health,
    jobs,
    models,
    monitors,
    openai_jobs,
    sweeps,
    webhooks,
)
from ftjobs.service.routes import annotations as annotation_routes  # `annotations` is the __future__ feature
from ftjobs.service.routes.jobs import MAX_JSON_BODY_BYTES
from ftjobs.service.sse import Streaming
from ftjobs.service.store import Store
from ftjobs.service.version import API_VERSION

log = logging.getLogger("ftjobs.service")
GIL_SWITCH_S = 0.0005  # s; see lifespan
SWEEP_INTERVAL_S = 600  # stale temporary files are looked for at startup, then this often

DESCRIPTION = (
    "Fine-tune language models as jobs. Every error is "
    '`{"error": {"code", "message", "param", "type"}}`; 503 + `Retry-After` when Redis is unreachable. '
    "OPTIONS on any path answers 204 with `Allow` (every method the path serves); a method it does not serve, "
    "405 with the same `Allow`."
)


def operation_id(route: APIRoute) -> str:
    """Stable operationIds: `{tag}-{function name}`, e.g. `jobs-create_job`."""
    return f"{route.tags[0]}-{route.name}" if route.tags else route.name


class FtjobsAPI(FastAPI):
    """FastAPI with the spec's OpenAPI links (`service/links.py`) written into the generated spec."""

    def openapi(self) -> dict[str, Any]:
        if self.openapi_schema is None:
            self.openapi_schema = add_links(super().openapi())
        return self.openapi_schema


def sweep_temp_files(storage: Storage, settings: Settings) -> None:
    """Delete what killed uploads left: atomic-write temporaries in the store, spools in the data folder."""
    removed = storage.sweep_temp(settings.temp_max_age_s)
    removed += sweep_folder(files.spool_dir(settings), settings.temp_max_age_s)
    if removed:
        log.info("removed %d stale temporary file(s): %s", len(removed), ", ".join(removed[:10]))


async def sweep_forever(storage: Storage, settings: Settings) -> None:
    """Sweep now, then every SWEEP_INTERVAL_S, off the event loop; a failed sweep is logged and retried."""
    while True:
        try:
            await asyncio.to_thread(sweep_temp_files, storage, settings)
        except Exception:
            log.exception("sweeping stale temporary files failed; retrying in %d s", SWEEP_INTERVAL_S)
        await asyncio.sleep(SWEEP_INTERVAL_S)


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app; Redis is connected lazily, so the app starts (and answers 503) while Redis is down."""
    settings = settings or Settings.from_env()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # An upload's rows are checked in a worker thread: the event loop waits at most this long for the GIL
        # (Python's default, 5 ms, is what a read waited per hand-over during an upload).
        sys.setswitchinterval(GIL_SWITCH_S)
        redis = connect(settings.redis_url, ride_out_outages=False)  # an unreachable Redis is a quick 503
        app.state.redis = redis
        app.state.storage = Storage(settings.storage_url)
        app.state.store = Store(redis, app.state.storage)  # the store: archived events and metrics
        app.state.limiter = RateLimiter(redis)
        # The polled reads and the rate limit, on the event loop (service/reads.py): no thread hop per request.
        aredis = AsyncRedis.from_url(settings.redis_url, socket_connect_timeout=2, socket_timeout=10)
        app.state.reads = AsyncReads(aredis)
        app.state.async_limiter = AsyncRateLimiter(aredis)
        app.state.queue = JobQueue(redis, settings)
        app.state.streaming = Streaming(settings)  # live event streams (service/sse.py)
        # In the background: a large store must not delay startup.
        sweeper = asyncio.create_task(sweep_forever(app.state.storage, settings))
        try:
            yield
        finally:
            sweeper.cancel()
            with suppress(asyncio.CancelledError):
                await sweeper
            redis.close()
            with suppress(RuntimeError):  # its connections belong to a loop already closed (an app run by hand)
                await app.state.reads.aclose()
                await aredis.aclose()
            await app.state.streaming.aclose()

    app = FtjobsAPI(
        title="ftjobs",
        version=API_VERSION,
        description=DESCRIPTION,
        lifespan=lifespan,
        generate_unique_id_function=operation_id,
        docs_url=None,  # /docs and /redoc come from routes/docs.py, with local assets (no CDN)
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.tenants = TenantsSource(settings.tenants_file, settings.api_keys)  # keys, scopes, limits; re-read
    install_error_handlers(app)
    app.add_middleware(DeclaredBodyLimit, max_bytes=MAX_JSON_BODY_BYTES, exempt_paths=["/v1/files"])
    app.add_middleware(AuthFirst)  # added last, so it runs first: 401 before a 413 or a parsed body
    install_metrics(app, settings)  # GET /metrics; its HTTP middleware counts every response, a 401 or 429 too
    app.add_middleware(RequestIds)  # outermost: every response (a 401 too) carries X-Request-ID
    app.include_router(health.router)
    app.include_router(docs.router)
    app.include_router(dashboard.router)  # the web page; its data comes from /v1
    common = error_responses(Unauthorized, InsufficientScope, RateLimited, InternalError, RedisUnavailable)
    routers = (files, jobs, evaluations, sweeps, monitors, artifacts, exports, annotation_routes, models, webhooks,
               openai_jobs, admin)  # fmt: skip
    for module in routers:
        app.include_router(module.router, responses=common)
    # The route a job GET answered in AuthFirst would have reached (service/reads.py): its metrics label.
    app.state.job_route = next(r for r in jobs.router.routes if isinstance(r, APIRoute) and r.name == "get_job")
    return app


def app_from_env() -> FastAPI:
    """Factory for `uvicorn --factory ftjobs.service.main:app_from_env`: settings from FTJOBS_* variables."""
    settings = Settings.from_env()
    setup_logging("api", settings)  # FTJOBS_LOG_FORMAT; uvicorn's access log gives way to service/requestid.py's
    return create_app(settings)
