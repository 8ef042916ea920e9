"""Annotated dependencies of the routes: settings, Redis, store, storage, queue and the caller's tenant."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from redis import Redis
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from ftjobs.client.models import DEFAULT_TENANT
from ftjobs.core.queue import JobQueue
from ftjobs.core.settings import Settings
from ftjobs.core.storage import Storage
from ftjobs.service.errors import Unauthorized
from ftjobs.service.store import Store


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_redis(request: Request) -> Redis:
    redis: Redis = request.app.state.redis
    return redis


def get_store(request: Request) -> Store:
    store: Store = request.app.state.store
    return store


def get_storage(request: Request) -> Storage:
    storage: Storage = request.app.state.storage
    return storage


def get_queue(request: Request) -> JobQueue:
    queue: JobQueue = request.app.state.queue
    return queue


SettingsDep = Annotated[Settings, Depends(get_settings)]
RedisDep = Annotated[Redis, Depends(get_redis)]
StoreDep = Annotated[Store, Depends(get_store)]
StorageDep = Annotated[Storage, Depends(get_storage)]
QueueDep = Annotated[JobQueue, Depends(get_queue)]

bearer = HTTPBearer(auto_error=False, description="An API key from FTJOBS_API_KEYS (when auth is enabled).")


def tenant_of(settings: Settings, authorization: str | None) -> str:
    """The tenant of the API key in an `Authorization: Bearer <key>` header; `default` when auth is off."""
    if not settings.api_keys:
        return DEFAULT_TENANT
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized()
    presented = token.encode()
    tenant = None
    for key, owner in settings.api_keys.items():  # compare with every key, in constant time each
        if hmac.compare_digest(presented, key.encode()):
            tenant = owner
    if tenant is None:
        raise Unauthorized("Invalid API key.")
    return tenant


def get_tenant(
    request: Request,
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],  # declares the scheme in OpenAPI
) -> str:
    """The tenant of the caller's API key (checked before the body is read: `AuthFirst`)."""
    return tenant_of(settings, request.headers.get("authorization"))


class AuthFirst:
    """Answer 401 before a /v1 request's body is read or parsed: a caller without a key learns nothing more."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/v1/"):
            settings: Settings = scope["app"].state.settings
            try:
                tenant_of(settings, Headers(scope=scope).get("authorization"))
            except Unauthorized as error:
                await error.response()(scope, receive, send)
                return
        await self.app(scope, receive, send)


TenantDep = Annotated[str, Depends(get_tenant)]
