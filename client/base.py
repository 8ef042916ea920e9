"""The transport-free core of the client: plan steps, and the request/retry/parse logic both clients share.

Every API operation is written once, as a *plan*: a generator that yields small I/O steps (`Send` a
request, `Sleep`, `Read` or `Save` a streamed body, `Emit` items to an iterator's caller) and is sent
their results back (or has their exceptions thrown in). Retries, pagination, polling and checksum
checks live in plans; `Client` and `AsyncClient` (client/client.py) only differ in how they execute a
step — httpx.Client and time.sleep, or httpx.AsyncClient and asyncio.sleep. Every list that spans pages is
walked by the one loop here, `paginate` (`jobs.follow`, `jobs.all_events`, `jobs.all_metrics`).

Retries (`BaseClient._request`): connection errors, timeouts, 429, 502, 503 and 504 are retried with
exponential backoff and jitter (a `Retry-After` header of up to 60 s wins) — GETs always, POSTs only
when they carry an `Idempotency-Key` (`jobs.create` always sends one). A refused connection never
reached the server and is retried for any method.
"""

from __future__ import annotations

import asyncio
import builtins
import hashlib
import os
import random
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Generic, Protocol, TypeAlias, TypeVar

import httpx
from pydantic import BaseModel, ValidationError

from ftjobs.client import errors
from ftjobs.client.models.common import Page

DEFAULT_BASE_URL = "http://127.0.0.1:8000"
RETRY_STATUSES = frozenset({429, 502, 503, 504})
INITIAL_BACKOFF_S = 0.5
MAX_BACKOFF_S = 8.0
MAX_RETRY_AFTER_S = 60.0  # a longer Retry-After is ignored in favour of our own backoff
USER_AGENT = "ftjobs-python/0.1.0"

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)

# --------------------------------------------------------------------------- plan steps


@dataclass(frozen=True)
class Send:
    """Send one request; the result is the httpx.Response (streamed, unread, when `stream`)."""

    method: str
    url: str
    headers: dict[str, str]
    params: dict[str, Any] | None = None
    json: Any = None
    files: Any = None
    data: dict[str, str] | None = None
    stream: bool = False


@dataclass(frozen=True)
class Sleep:
    seconds: float


@dataclass(frozen=True)
class Read:
    """Read (and close) a streamed response's body."""

    response: httpx.Response


@dataclass(frozen=True)
class Save:
    """Stream a response's body into `path` and close it; the result is (sha256 hex, byte count)."""

    response: httpx.Response
    path: Path
    on_bytes: Callable[[int], None] | None = None  # called with the bytes written so far (a progress bar)


@dataclass(frozen=True)
class Emit(Generic[T]):
    """Hand items to the caller of an iterator method (`jobs.follow`)."""

    items: builtins.list[T]


class LineStream:
    """A streamed response read line by line (`NextLine`); the executor keeps its line iterator here."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.lines: Any = None  # iter_lines() or aiter_lines(), made on the first read

    def next_line(self) -> str | None:
        if self.lines is None:
            self.lines = self.response.iter_lines()
        return next(self.lines, None)

    async def anext_line(self) -> str | None:
        if self.lines is None:
            self.lines = self.response.aiter_lines()
        return await anext(self.lines, None)

    def abandon(self) -> None:
        """Close the response from a plan's `finally` (no step can run there): at once for a sync stream, as a
        task for an async one."""
        if isinstance(self.response.stream, httpx.SyncByteStream):
            self.response.close()
            return
        try:
            task = asyncio.get_running_loop().create_task(self.response.aclose())
        except RuntimeError:  # no loop any more: the connection goes with the response
            return
        _closing.add(task)
        task.add_done_callback(_closing.discard)


_closing: set[asyncio.Task[None]] = set()  # keeps closing tasks alive until done


@dataclass(frozen=True)
class NextLine:
    """The next line of a `LineStream` (without its line break); None once the server ended the body."""

    stream: LineStream


Step: TypeAlias = Send | Sleep | Read | Save | NextLine
Plan: TypeAlias = Generator[Step, Any, T]
Stream: TypeAlias = Generator[Step | Emit[T], Any, None]


class Identified(Protocol):
    @property
    def id(self) -> str: ...


Item = TypeVar("Item", bound=Identified)


def paginate(
    fetch: Callable[[str | None], Plan[Page[Item]]], after: str | None = None
) -> Generator[Step | Emit[Item], Any, str | None]:
    """The one pagination loop: fetch the pages after `after` until one says there is no more, emitting their items.

    Returns the id of the last item seen (else `after`): the cursor to go on from once there are more (`jobs.follow`).
    """
    while True:
        page = yield from fetch(after)
        if page.data:
            after = page.data[-1].id
            yield Emit(page.data)
        if not (page.has_more and page.data):
            return after


class Digest:
    """Writes chunks to a file while hashing and counting them."""

    def __init__(self, fh: IO[bytes], on_bytes: Callable[[int], None] | None = None) -> None:
        self.fh, self.sha, self.size, self.on_bytes = fh, hashlib.sha256(), 0, on_bytes

    def write(self, chunk: bytes) -> None:
        self.fh.write(chunk)
        self.sha.update(chunk)
        self.size += len(chunk)
        if self.on_bytes is not None:
            self.on_bytes(self.size)

    def result(self) -> tuple[str, int]:
        return self.sha.hexdigest(), self.size


# --------------------------------------------------------------------------- shared core


class BaseClient:
    """Configuration, request building, retries and response parsing shared by both clients."""

    def __init__(
        self,
        base_url: str | None,
        api_key: str | None,
        timeout: float,
        max_retries: int,
        has_http_client: bool,
    ) -> None:
        self.base_url = (base_url or os.environ.get("FTJOBS_URL") or DEFAULT_BASE_URL).rstrip("/")
        self.api_key = api_key if api_key is not None else (os.environ.get("FTJOBS_API_KEY") or None)
        self.timeout = timeout
        self.max_retries = max_retries
        # A caller's http_client (e.g. a starlette TestClient) carries its own base_url: send it paths
        # relative to that unless a base_url was given explicitly.
        self._url_prefix = "" if has_http_client and base_url is None else self.base_url

    def _headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json", "User-Agent": USER_AGENT}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers

    def _backoff(self, attempt: int, retry_after: str | None = None) -> float:
        hinted = errors.parse_retry_after(retry_after)
        if hinted is not None and hinted <= MAX_RETRY_AFTER_S:
            return hinted
        ceiling = min(MAX_BACKOFF_S, INITIAL_BACKOFF_S * 2.0**attempt)
        return ceiling * (0.5 + random.random() / 2)  # jitter keeps clients from retrying in lockstep

    def _request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        files: Any = None,
        data: dict[str, str] | None = None,
        idempotency_key: str | None = None,
        stream: bool = False,
        headers: Mapping[str, str] | None = None,
    ) -> Plan[httpx.Response]:
        """Send a request, retrying what is safe to retry; raise the `APIError` for a non-2xx answer."""
        headers = {**self._headers(), **(headers or {})}
        if idempotency_key:
            headers["Idempotency-Key"] = idempotency_key
        query = {k: v for k, v in (params or {}).items() if v is not None} or None
        send = Send(method, self._url_prefix + path, headers, query, json, files, data, stream)
        retryable = method in ("GET", "HEAD") or idempotency_key is not None
        attempt = 0
        while True:
            last = attempt >= self.max_retries
            try:
                response: httpx.Response = yield send
            except httpx.TransportError as exc:
                timed_out = isinstance(exc, httpx.TimeoutException)
                never_sent = isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout)
                if last or not (retryable or never_sent):
                    what = f"{method} {send.url}"
                    if timed_out:
                        raise errors.APITimeoutError(f"{what} timed out ({type(exc).__name__})") from exc
                    raise errors.APIConnectionError(f"{what} failed: {exc or type(exc).__name__}") from exc
                delay = self._backoff(attempt)
            else:
                if response.is_success:
                    return response
                if stream:
                    yield Read(response)
                if last or not retryable or response.status_code not in RETRY_STATUSES:
                    raise errors.error_for_status(response.status_code, response.content, response.headers)
                delay = self._backoff(attempt, response.headers.get("retry-after"))
            yield Sleep(delay)
            attempt += 1

    def _parse(self, response: httpx.Response, model: type[M]) -> M:
        try:
            return model.model_validate_json(response.content)
        except ValidationError as exc:
            raise errors.InvalidResponse(
                f"the response to {response.request.method} {response.request.url.path} is not a "
                f"{model.__name__} ({exc.error_count()} errors)",
                status_code=response.status_code,
                code="invalid_response",
                body=response.text[:500],
                headers=response.headers,
            ) from exc

    def _get(self, path: str, model: type[M], params: Mapping[str, Any] | None = None) -> Plan[M]:
        response = yield from self._request("GET", path, params=params)
        return self._parse(response, model)

    def _post(self, path: str, model: type[M], **kwargs: Any) -> Plan[M]:
        response = yield from self._request("POST", path, **kwargs)
        return self._parse(response, model)
