"""The exception handlers: every failure leaves the API as an ErrorBody (see `service/errors.py`)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from http import HTTPStatus
from typing import Any

import redis.exceptions
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from ftjobs.service.errors import (
    InternalError,
    MalformedBody,
    MethodNotAllowed,
    NotFound,
    RedisUnavailable,
    RequestEntityTooLarge,
    ServiceError,
    ValidationError,
)

log = logging.getLogger("ftjobs.service")


def _param(loc: Sequence[int | str], body: Any) -> str | None:
    """Dotted field path of a validation error, without the union-member tags pydantic adds (`float`)."""
    if not loc:
        return None
    where, *rest = loc
    if where != "body":  # query / path / header: the name is the parameter
        return ".".join(str(p) for p in rest) or None
    parts: list[str] = []
    node = body
    for i, part in enumerate(rest):
        last = i == len(rest) - 1
        if isinstance(node, dict) and isinstance(part, str) and (part in node or last):
            parts.append(part)
            node = node.get(part)
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            parts.append(str(part))
            node = node[part]
        # anything else is a union-member tag, not a field of the request
    return ".".join(parts) or None


def validation_error(exc: RequestValidationError) -> ServiceError:
    errors = list(exc.errors())
    if not errors:
        return ValidationError("Invalid request.")
    first = errors[0]
    if first.get("type") == "json_invalid":
        reason = (first.get("ctx") or {}).get("error", "JSON decode error")
        loc = first.get("loc") or ()
        pos = f" at character {loc[-1]}" if loc and isinstance(loc[-1], int) else ""
        return MalformedBody(f"The request body is not valid JSON: {reason}{pos}.")
    params = [_param(e.get("loc") or (), exc.body) for e in errors]
    param = params[0]
    msg = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    if first.get("type") == "missing" and param is None:
        return ValidationError("The request body is required (a JSON object).")
    message = f"{param or 'body'}: {msg}"
    others = len({p for p in params if p != param})
    if others:
        message += f" (and {others} more invalid field{'s' if others > 1 else ''})"
    return ValidationError(message, param=param)


# What starlette/FastAPI raise as HTTPException, mapped onto our tree.
HTTP_ERRORS: dict[int, type[ServiceError]] = {
    400: MalformedBody,
    404: NotFound,
    405: MethodNotAllowed,
    413: RequestEntityTooLarge,
}


def route_table(routes: Sequence[BaseRoute]) -> list[Any]:
    """Every route of an app, flattened (each with `path`, `path_regex`, `methods`): recent FastAPI keeps included
    routers nested and flattens them with `iter_route_contexts`; older ones copied their routes into app.routes."""
    try:
        from fastapi.routing import iter_route_contexts
    except ImportError:
        return list(routes)
    return list(iter_route_contexts(routes))


def allowed_methods(routes: Sequence[BaseRoute], path: str) -> list[str]:
    """Every method some route serves at `path`, plus OPTIONS (answered for every path: `on_http_error`).

    Starlette's own 405 names only the first route whose path matched (`Allow: POST` on /v1/files,
    which also has a GET); this is the union over all of them. HEAD appears only where a route serves it."""
    methods: set[str] = set()
    for route in route_table(routes):
        regex, served = getattr(route, "path_regex", None), getattr(route, "methods", None)
        if regex is not None and served and regex.match(path):
            methods |= set(served)
    return sorted(methods | {"OPTIONS"}) if methods else []


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def install_error_handlers(app: FastAPI) -> None:
    """Route every exception to ErrorBody: ours, validation, HTTP (404/405), Redis outages, and the rest;
    OPTIONS on any path that exists is 204 with its full `Allow`."""

    async def on_service_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ServiceError)
        return exc.response()

    async def on_validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return validation_error(exc).response()

    async def on_http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        headers = exc.headers
        if exc.status_code == 405:  # the path exists: say every method it serves, and answer OPTIONS with them
            path = request.scope["path"].removeprefix(request.scope.get("root_path", ""))
            allow = ", ".join(allowed_methods(app.router.routes, path))
            if request.method == "OPTIONS":
                return Response(status_code=204, headers={"Allow": allow})
            headers = {**(headers or {}), "Allow": allow}
        cls = HTTP_ERRORS.get(exc.status_code, InternalError if exc.status_code >= 500 else ServiceError)
        detail = str(exc.detail or "")
        if not detail or detail == _phrase(exc.status_code):  # starlette's bare phrase: say what was asked
            detail = f"{_phrase(exc.status_code)}: {request.method} {request.url.path}"
        response = cls(detail, headers=headers).response()
        response.status_code = exc.status_code  # a status with no class of its own keeps its number
        return response

    async def on_redis_error(request: Request, exc: Exception) -> JSONResponse:
        log.warning("redis unavailable on %s %s: %s", request.method, request.url.path, exc)
        return RedisUnavailable().response()

    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return InternalError().response()

    app.add_exception_handler(ServiceError, on_service_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(HTTPException, on_http_error)
    app.add_exception_handler(redis.exceptions.ConnectionError, on_redis_error)
    app.add_exception_handler(redis.exceptions.TimeoutError, on_redis_error)
    app.add_exception_handler(Exception, on_unexpected)


class DeclaredBodyLimit:
    """Answer 413 (an ErrorBody) before reading a body whose Content-Length is over the limit.

    Bodies without a Content-Length are capped by the routes' `max_body_size`; the upload route is
    exempt because it streams and enforces FTJOBS_MAX_UPLOAD_BYTES itself.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, exempt_paths: Sequence[str] = ()) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.exempt_paths = frozenset(exempt_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] not in self.exempt_paths:
            declared = Headers(scope=scope).get("content-length", "")
            if declared.isdigit() and int(declared) > self.max_bytes:
                error = RequestEntityTooLarge(f"The request body exceeds {self.max_bytes} bytes.")
                await error.response()(scope, receive, send)
                return
        await self.app(scope, receive, send)
