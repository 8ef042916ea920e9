"""Annotated dependencies of the routes (settings, Redis, store, storage, queue, the caller's tenant and limits),
and `AuthFirst`: the key, its scope and the tenant's request rate, checked before any body is read."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from redis import Redis
from redis.asyncio import Redis as AsyncRedis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Send
from starlette.types import Scope as AsgiScope

from ftjobs.client.models import DEFAULT_TENANT
from ftjobs.core import keys
from ftjobs.core.queue import JobQueue
from ftjobs.core.settings import Settings
from ftjobs.core.storage import Storage
from ftjobs.core.tenants import ALL_SCOPES, ApiKey, Scope, TenantLimits, TenantsSource
from ftjobs.service.errors import InsufficientScope, RedisUnavailable, ServiceError, Unauthorized
from ftjobs.service.limits import RATE_SCRIPT, RateDecision
from ftjobs.service.reads import AsyncReads, job_get, rate_args, rate_decision, send_job
from ftjobs.service.store import Store


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_redis(request: Request) -> Redis:
    redis: Redis = request.app.state.redis
    return redis


async def get_store(request: Request) -> Store:
    store: Store = request.app.state.store
    return store


async def get_reads(request: Request) -> AsyncReads:
    reads: AsyncReads = request.app.state.reads
    return reads


async def get_storage(request: Request) -> Storage:
    storage: Storage = request.app.state.storage
    return storage


async def get_tenants(request: Request) -> TenantsSource:
    tenants: TenantsSource = request.app.state.tenants
    return tenants


async def get_queue(request: Request) -> JobQueue:
    queue: JobQueue = request.app.state.queue
    return queue


SettingsDep = Annotated[Settings, Depends(get_settings)]
RedisDep = Annotated[Redis, Depends(get_redis)]
StoreDep = Annotated[Store, Depends(get_store)]
StorageDep = Annotated[Storage, Depends(get_storage)]
QueueDep = Annotated[JobQueue, Depends(get_queue)]
ReadsDep = Annotated[AsyncReads, Depends(get_reads)]
TenantsDep = Annotated[TenantsSource, Depends(get_tenants)]

bearer = HTTPBearer(
    auto_error=False, description="An API key from FTJOBS_API_KEYS or the tenants file (when auth is enabled)."
)
NO_AUTH = ApiKey(tenant=DEFAULT_TENANT, scopes=ALL_SCOPES, name="no auth")  # every caller, when auth is off
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def authenticate(tenants: TenantsSource, authorization: str | None) -> ApiKey:
    """The key in an `Authorization: Bearer <key>` header (looked up by its sha256; keys are never kept in the
    clear); NO_AUTH (tenant `default`, every scope) when auth is off."""
    if not tenants.auth_enabled:
        return NO_AUTH
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized()
    key = tenants.current().key(token)
    if key is None:
        raise Unauthorized("Invalid API key.")
    return key


def required_scope(method: str, path: str) -> Scope:
    """`read` for GET (and HEAD, OPTIONS), `submit` for what changes state (uploads, create, cancel, deletes),
    `admin` for /v1/admin."""
    if path.startswith("/v1/admin"):
        return Scope.admin
    return Scope.read if method.upper() in READ_METHODS else Scope.submit


def require_scope(key: ApiKey, scope: Scope) -> None:
    if scope not in key.scopes:
        raise InsufficientScope(
            f"This API key ({key.name or 'unnamed'}) lacks the `{scope}` scope this request needs.", param=scope.value
        )


async def get_caller(request: Request, tenants: TenantsDep) -> ApiKey:
    """The caller's key, as `AuthFirst` found it (or looked up again when the middleware is not in front)."""
    caller = getattr(request.state, "caller", None)
    if isinstance(caller, ApiKey):
        return caller
    key = authenticate(tenants, request.headers.get("authorization"))
    require_scope(key, required_scope(request.method, request.url.path))
    return key


CallerDep = Annotated[ApiKey, Depends(get_caller)]


async def get_tenant(
    caller: CallerDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],  # declares the scheme in OpenAPI
) -> str:
    """The tenant of the caller's API key (checked before the body is read: `AuthFirst`)."""
    return caller.tenant


TenantDep = Annotated[str, Depends(get_tenant)]


async def get_limits(tenant: TenantDep, tenants: TenantsDep) -> TenantLimits:
    """The caller's tenant's limits as the tenants file says now."""
    return tenants.current().limits(tenant)


LimitsDep = Annotated[TenantLimits, Depends(get_limits)]


class AsyncRateLimiter:
    """`limits.RateLimiter` on the event loop: the same GCRA script over the async client (no thread hop)."""

    def __init__(self, redis: AsyncRedis) -> None:
        self._script = redis.register_script(RATE_SCRIPT)

    async def check(self, tenant: str, limits: TenantLimits) -> RateDecision | None:
        """The verdict for one more request; None when the tenant has no rate limit."""
        if (args := rate_args(limits)) is None:
            return None
        return rate_decision(await self._script(keys=[keys.rate_key(tenant)], args=args), args[1])


class AuthFirst:
    """For every /v1 request, before its body is read or parsed: the key (401), its scope for the method (403),
    then the tenant's request rate (429). A caller without a key learns nothing more; a normal response carries
    the rate's `x-ratelimit-*` headers."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: AsgiScope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        state = scope["app"].state
        tenants: TenantsSource = state.tenants
        try:
            caller = authenticate(tenants, Headers(scope=scope).get("authorization"))
            require_scope(caller, required_scope(scope["method"], scope["path"]))
            limits = tenants.current().limits(caller.tenant)
            record: list[bytes] = []
            if (job_id := job_get(scope)) is None:
                limiter: AsyncRateLimiter = state.async_limiter
                decision = await limiter.check(caller.tenant, limits)
            else:  # the polled job GET: the rate and the record in one round trip (service/reads.py)
                reads: AsyncReads = state.reads
                decision, record = await reads.job_with_rate(caller.tenant, job_id, limits)
            if decision is not None and not decision.allowed:
                raise decision.error()
            scope.setdefault("state", {})["caller"] = caller
            if record:  # answered here, without routing; a job not found goes on to the route (its 404)
                await send_job(scope, send, reads.job_json(record), decision)
                return
            if decision is not None:
                send = with_headers(send, decision.headers())
        except ServiceError as error:
            await error.response()(scope, receive, send)
            return
        except (RedisConnectionError, RedisTimeoutError):
            await RedisUnavailable().response()(scope, receive, send)
            return
        await self.app(scope, receive, send)


def with_headers(send: Send, headers: Mapping[str, str]) -> Send:
    """`send` that adds `headers` to the response start, unless the response set them itself (a quota's 429)."""
    extra = [(k.lower().encode(), v.encode()) for k, v in headers.items()]

    async def send_with_headers(message: Message) -> None:
        if message["type"] == "http.response.start":
            present = {k.lower() for k, _ in message.get("headers", [])}
            message["headers"] = [*message.get("headers", []), *(h for h in extra if h[0] not in present)]
        await send(message)

    return send_with_headers
