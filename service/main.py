"""The FastAPI app factory: `create_app(settings)`; `uvicorn --factory service.main:app_from_env`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.routing import APIRoute
from redis import Redis

from service.config import Settings
from service.errors import InternalError, RedisUnavailable, Unauthorized, error_responses
from service.handlers import DeclaredBodyLimit, install_error_handlers
from service.queue import JobQueue
from service.routes import artifacts, files, health, jobs
from service.routes.jobs import MAX_JSON_BODY_BYTES
from service.storage import Storage
from service.store import Store
from service.version import API_VERSION

DESCRIPTION = (
    "Fine-tune language models as jobs. Every error is "
    '`{"error": {"code", "message", "param", "type"}}`; 503 + `Retry-After` when Redis is unreachable.'
)


def operation_id(route: APIRoute) -> str:
    """Stable operationIds: `{tag}-{function name}`, e.g. `jobs-create_job`."""
    return f"{route.tags[0]}-{route.name}" if route.tags else route.name


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app; Redis is connected lazily, so the app starts (and answers 503) while Redis is down."""
    settings = settings or Settings.from_env()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Short socket timeouts: an unreachable Redis becomes a quick 503, not a hung request.
        redis = Redis.from_url(settings.redis_url, socket_connect_timeout=2, socket_timeout=10)
        app.state.redis = redis
        app.state.store = Store(redis)
        app.state.queue = JobQueue(redis, settings)
        app.state.storage = Storage(settings.storage_url)
        try:
            yield
        finally:
            redis.close()

    app = FastAPI(
        title="ftjobs",
        version=API_VERSION,
        description=DESCRIPTION,
        lifespan=lifespan,
        generate_unique_id_function=operation_id,
    )
    app.state.settings = settings
    install_error_handlers(app)
    app.add_middleware(DeclaredBodyLimit, max_bytes=MAX_JSON_BODY_BYTES, exempt_paths=["/v1/files"])
    app.include_router(health.router)
    common = error_responses(Unauthorized, InternalError, RedisUnavailable)
    for module in (files, jobs, artifacts):
        app.include_router(module.router, responses=common)
    return app


def app_from_env() -> FastAPI:
    """Factory for `uvicorn --factory service.main:app_from_env`: settings from FTJOBS_* variables."""
    return create_app(Settings.from_env())
