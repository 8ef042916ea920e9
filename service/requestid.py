"""`X-Request-ID` on every request and response, and the API's own access log.

The caller's id is kept when it is printable ASCII of at most MAX_REQUEST_ID_LENGTH characters (so it can go
into a header and a log line unchanged); otherwise, or when absent, a new one is made. It is bound for the
request's log lines (`core/logs.py`), put into every error body (`service/errors.py` reads it), and echoed on
every response. The access log writes mutating requests and every 4xx/5xx at INFO and the rest (the polls)
at DEBUG, so a followed job does not write a line per second.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ftjobs.core.logs import request_id_var

HEADER = "X-Request-ID"
MAX_REQUEST_ID_LENGTH = 128
VALID_REQUEST_ID = re.compile(rf"[\x21-\x7e]{{1,{MAX_REQUEST_ID_LENGTH}}}")  # printable ASCII, no spaces
QUIET_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

access_log = logging.getLogger("ftjobs.access")


def new_request_id() -> str:
    return f"req_{uuid.uuid4().hex}"


def accepted_request_id(value: str | None) -> str:
    """The caller's id if it is safe to echo and log as it is, else a fresh one."""
    if value and VALID_REQUEST_ID.fullmatch(value):
        return value
    return new_request_id()


class RequestIds:
    """Outermost middleware: pick the id, bind it, echo it, and write one access line per request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = accepted_request_id(Headers(scope=scope).get(HEADER))
        # Not reset afterwards: the error handler of last resort runs outside this middleware, after it
        # returns, and must still see the id. Each request runs in its own task, so nothing leaks.
        request_id_var.set(request_id)
        scope.setdefault("state", {})["request_id"] = request_id
        started = time.monotonic()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                MutableHeaders(scope=message)[HEADER] = request_id
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            self._log(scope, status, started)

    @staticmethod
    def _log(scope: Scope, status: int, started: float) -> None:
        method = str(scope.get("method", ""))
        level = logging.DEBUG if method in QUIET_METHODS and status < 400 else logging.INFO
        if not access_log.isEnabledFor(level):
            return
        # escaped: a decoded path may hold %0A or U+2028, which must not forge or split a log line
        path = json.dumps(str(scope.get("path", "")))[1:-1]
        elapsed_ms = round((time.monotonic() - started) * 1000, 1)
        client = scope.get("client")
        caller = scope.get("state", {}).get("caller")  # set by AuthFirst once the key is known
        access_log.log(
            level,
            "%s %s %d %.1fms",
            method,
            path,
            status,
            elapsed_ms,
            extra={
                "method": method,
                "path": path,
                "status": status,
                "duration_ms": elapsed_ms,
                "client": client[0] if client else None,
                "tenant": getattr(caller, "tenant", None),
            },
        )
