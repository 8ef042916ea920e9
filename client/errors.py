"""Exceptions raised by the ftjobs client: one tree, one function that maps a response to its class.

Every error the API returns has the body `{"error": {"code", "message", "param", "type"}}`; the HTTP
status picks the class (`NotFound`, `Conflict`, ...) and the body fills its fields. Anything the
client itself detects (no response, a wait that ran out, a checksum that does not match) derives
from `FtjobsError` too, so `except FtjobsError` catches every failure of a client call.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from ftjobs.client.models import ErrorBody

if TYPE_CHECKING:  # pragma: no cover
    from ftjobs.client.models import Job


class FtjobsError(Exception):
    """Base of every exception the ftjobs client raises."""


class APIError(FtjobsError):
    """The API answered with a non-2xx status (or, for `APIConnectionError`, not at all)."""

    status_code: int | None = None

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        code: str = "api_error",
        param: str | None = None,
        type: str = "api_error",
        body: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        if status_code is not None:
            self.status_code = status_code
        self.message = message
        self.code = code
        self.param = param
        self.type = type
        self.body = body
        self.headers: dict[str, str] = {k.lower(): v for k, v in (headers or {}).items()}

    @property
    def request_id(self) -> str | None:
        """The API's id for the failed request (`X-Request-ID`, else the error body's): quote it to an operator."""
        from_header = self.headers.get("x-request-id")
        if from_header:
            return from_header
        error = self.body.get("error") if isinstance(self.body, dict) else None
        from_body = error.get("request_id") if isinstance(error, dict) else None
        return from_body if isinstance(from_body, str) else None

    def __str__(self) -> str:
        where = f" (param: {self.param})" if self.param else ""
        status = f"{self.status_code} " if self.status_code is not None else ""
        return f"{status}{self.code}: {self.message}{where}"


class BadRequest(APIError):
    status_code = 400


class AuthenticationError(APIError):
    status_code = 401


class PermissionDenied(APIError):
    status_code = 403


class NotFound(APIError):
    status_code = 404


class Conflict(APIError):
    status_code = 409


class PayloadTooLarge(APIError):
    status_code = 413


class ValidationFailed(APIError):
    status_code = 422


class RateLimited(APIError):
    status_code = 429


class ServerError(APIError):
    status_code = 500


class ServiceUnavailable(ServerError):
    status_code = 503

    @property
    def retry_after(self) -> float | None:
        """Seconds the server asked us to wait (the `Retry-After` header), if it said."""
        return parse_retry_after(self.headers.get("retry-after"))


class APIConnectionError(APIError):
    """No response: the connection was refused, reset, or failed to resolve."""

    def __init__(self, message: str, *, code: str = "connection_error") -> None:
        super().__init__(message, code=code, type="connection_error")


class APITimeoutError(APIConnectionError):
    """No response within the client's timeout."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code="timeout")


class InvalidResponse(APIError):
    """A 2xx response whose body is not what the API contract promises (a proxy page, a version skew)."""


class JobFailed(FtjobsError):
    """`jobs.wait(..., raise_on_failure=True)` found the job failed or cancelled."""

    def __init__(self, job: Job) -> None:
        self.job = job
        reason = f": {job.error.code}: {job.error.message}" if job.error else ""
        super().__init__(f"job {job.id} {job.status.value}{reason}")


class WaitTimeout(FtjobsError):
    """`jobs.wait` gave up before the job reached a terminal status."""

    def __init__(self, job: Job, timeout: float) -> None:
        self.job = job
        self.timeout = timeout
        super().__init__(f"job {job.id} still {job.status.value} after {timeout:g} s")


class ChecksumMismatch(FtjobsError):
    """A downloaded artifact's sha256 differs from the one the API announced; nothing was written."""

    def __init__(self, name: str, expected: str, actual: str) -> None:
        self.name = name
        self.expected = expected
        self.actual = actual
        super().__init__(f"artifact {name}: sha256 {actual} does not match the expected {expected}")


_BY_STATUS: dict[int, type[APIError]] = {
    int(cls.status_code or 0): cls
    for cls in (
        BadRequest,
        AuthenticationError,
        PermissionDenied,
        NotFound,
        Conflict,
        PayloadTooLarge,
        ValidationFailed,
        RateLimited,
        ServiceUnavailable,
    )
}


def error_for_status(
    status_code: int, body: bytes | str | None, headers: Mapping[str, str] | None = None
) -> APIError:
    """The exception for one non-2xx response: class from the status, fields from the `ErrorBody`."""
    cls = _BY_STATUS.get(status_code) or (ServerError if status_code >= 500 else APIError)
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else (body or "")
    parsed: Any = None
    try:
        parsed = json.loads(text) if text else None
        detail = ErrorBody.model_validate(parsed).error
    except (ValueError, ValidationError):
        # Not our error body (a proxy's HTML page, an empty 502): keep what there is.
        message = text.strip()[:500] or f"HTTP {status_code}"
        kind = "api_error" if status_code >= 500 else "invalid_request_error"
        return cls(
            message,
            status_code=status_code,
            code=f"http_{status_code}",
            type=kind,
            body=parsed or text,
            headers=headers,
        )
    return cls(
        detail.message,
        status_code=status_code,
        code=detail.code,
        param=detail.param,
        type=detail.type,
        body=parsed,
        headers=headers,
    )


def parse_retry_after(value: str | None) -> float | None:
    """`Retry-After` in seconds: a number of seconds, or an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    from datetime import UTC, datetime
    from email.utils import parsedate_to_datetime

    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())
