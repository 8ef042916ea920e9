"""One exception tree for every error the API returns; ONE handler renders them all as ErrorBody.

The wire `code` is the snake_cased class name (`JobNotFound` -> `job_not_found`); routes list the
classes they can raise in `responses=error_responses(...)` so the OpenAPI spec shows them.
`service/handlers.py` maps every exception (ours, validation, HTTP, Redis, unexpected) onto this tree.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, ClassVar

from fastapi.responses import JSONResponse

from ftjobs.client.models import ErrorBody, ErrorDetail, FileProblem
from ftjobs.core.logs import current_request_id


def snake_case(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


class ServiceError(Exception):
    """Base of every error the API reports."""

    status_code: ClassVar[int] = 400
    type: ClassVar[str] = "invalid_request_error"
    default_message: ClassVar[str] = "Bad request."

    def __init__(
        self, message: str | None = None, param: str | None = None, headers: Mapping[str, str] | None = None
    ) -> None:
        self.message = message or self.default_message
        self.param = param
        self.headers = dict(headers or {})
        super().__init__(self.message)

    @classmethod
    def code(cls) -> str:
        return snake_case(cls.__name__)

    def body(self) -> ErrorBody:
        detail = ErrorDetail(code=self.code(), message=self.message, param=self.param, type=self.type)
        request_id = current_request_id()  # bound by service/requestid.py for the request being answered
        if request_id is not None:
            detail.request_id = request_id
        return ErrorBody(error=detail)

    def response(self) -> JSONResponse:
        body = self.body()
        headers = dict(self.headers)
        if body.error.request_id is not None:  # also for a 500, answered outside the request-id middleware
            headers.setdefault("X-Request-ID", body.error.request_id)
        return JSONResponse(
            # exclude_unset: optional extras (`details`, `total`, `request_id`) appear only on errors that set them
            body.model_dump(mode="json", exclude_unset=True),
            status_code=self.status_code,
            headers=headers,
        )


# --------------------------------------------------------------------------- 4xx


class MalformedBody(ServiceError):
    """The request body cannot be parsed (invalid JSON or multipart)."""

    default_message = "The request body cannot be parsed."


class Unauthorized(ServiceError):
    """Missing or unknown API key (`Authorization: Bearer <key>`)."""

    status_code = 401
    default_message = "Missing or invalid API key: send `Authorization: Bearer <key>`."

    def __init__(
        self, message: str | None = None, param: str | None = None, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message, param, headers={"WWW-Authenticate": "Bearer", **(headers or {})})


class InsufficientScope(ServiceError):
    """The API key lacks the scope this request needs (`param`: read for GET, submit for POST/DELETE, admin)."""

    status_code = 403
    default_message = "The API key lacks the scope this request needs."


class NotFound(ServiceError):
    """No such route or resource."""

    status_code = 404
    default_message = "Not found."


class JobNotFound(NotFound):
    """No job with this id for this tenant."""

    default_message = "No such job."


class FileNotFound(NotFound):
    """No file with this id for this tenant."""

    default_message = "No such file."


class ModelNotFound(NotFound):
    """No such model: not a base model under the model roots, nor a fine-tuned model of this tenant."""


class ArtifactNotFound(NotFound):
    """The job has no finalised artifact with this name."""

    default_message = "No such artifact."


class WebhookNotFound(NotFound):
    """No webhook endpoint with this id for this tenant."""

    default_message = "No such webhook endpoint."


class MonitorNotFound(NotFound):
    """No monitor with this id for this tenant."""

    default_message = "No such monitor."


class ExportNotFound(NotFound):
    """The job has no export with that id (exports are per job), or the export has no file of that name."""

    default_message = "Export not found."


class AnnotationNotFound(NotFound):
    """No annotation with this id for this tenant."""

    default_message = "No such annotation."


class CheckpointNotFound(NotFound):
    """The job kept no checkpoint at this step (its epochs' checkpoints are listed by the OpenAI API)."""

    default_message = "No such checkpoint."


class MethodNotAllowed(ServiceError):
    """The route exists, but not for this HTTP method (see the `Allow` header)."""

    status_code = 405
    default_message = "Method not allowed."


class Conflict(ServiceError):
    """The request conflicts with the current state of the resource."""

    status_code = 409
    default_message = "Conflict with the current state of the resource."


class JobNotCancellable(Conflict):
    """The job already finished (succeeded, failed or cancelled)."""


class JobNotPausable(Conflict):
    """The job already finished (succeeded, failed or cancelled), or is being cancelled: it cannot be paused."""


class JobNotPaused(Conflict):
    """Only a `paused` job can be resumed (a job resumed earlier is queued or running again)."""


class ParentJobNotSucceeded(Conflict):
    """parent_job_id names a job that has not succeeded (it has no final weights to continue from)."""


class JobNotExportable(Conflict):
    """Only a succeeded training job's weights can be exported (not a running, failed or evaluation job's, nor one
    whose fine-tuned model was deleted)."""


class IdempotencyKeyReused(Conflict):
    """The Idempotency-Key was already used with a different request body."""


class IdempotencyKeyInProgress(Conflict):
    """A request with this Idempotency-Key is still being processed; retry shortly."""


class ResourceInUse(Conflict):
    """The file or fine-tuned model is used by a job that has not finished; delete it once that job has."""


class ModelNotDeletable(Conflict):
    """Only a fine-tuned model (`ft:...`) can be deleted, not a base model of the deployment."""


class RequestEntityTooLarge(ServiceError):
    """The request body is larger than the route accepts (JSON bodies: 1 MiB)."""

    status_code = 413
    default_message = "The request body is too large."


class FileTooLarge(ServiceError):
    """The upload exceeds FTJOBS_MAX_UPLOAD_BYTES."""

    status_code = 413
    default_message = "The upload is too large."


class UnsupportedMediaType(ServiceError):
    """The request body has the wrong Content-Type."""

    status_code = 415
    default_message = "Unsupported Content-Type."


class UnsupportedFormat(UnsupportedMediaType):
    """The uploaded file's format needs support this server lacks (Parquet without pyarrow)."""

    default_message = "Unsupported file format."


class TooManyRequests(ServiceError):
    """Base of the 429s: `Retry-After` and `x-ratelimit-*` headers say when to come back."""

    status_code = 429
    default_message = "Too many requests."


class RateLimited(TooManyRequests):
    """The tenant's request rate is over `requests_per_second`; retry after `Retry-After` seconds."""

    default_message = "Too many requests; slow down."


class QuotaExceeded(TooManyRequests):
    """A tenant quota is reached; `param` names it (max_active_jobs, max_files, max_stored_bytes ...)."""

    default_message = "A tenant quota is reached."


class TooManyStreams(TooManyRequests):
    """The tenant has `sse_max_streams` event streams open on this API process; close one, or poll the events."""

    default_message = "Too many open event streams."


class InvalidRequest(ServiceError):
    """The request is well-formed JSON but asks for something invalid."""

    status_code = 422
    default_message = "Invalid request."


class ValidationError(InvalidRequest):
    """A field of the request (body, query or header) failed validation; `param` names it."""


class InvalidFile(InvalidRequest):
    """The uploaded file is malformed; `details` lists the problems (line, field, code), `param` the first line."""

    def __init__(
        self,
        message: str | None = None,
        param: str | None = None,
        headers: Mapping[str, str] | None = None,
        details: list[FileProblem] | None = None,
        total: int | None = None,
    ) -> None:
        super().__init__(message, param, headers)
        self.details = details
        self.total = total

    def body(self) -> ErrorBody:
        body = super().body()
        if self.details is not None:
            body.error.details, body.error.total = self.details, self.total
        return body


class IncompatibleFile(InvalidRequest):
    """The file's row format cannot train the requested task."""


class IncompatibleParentJob(InvalidRequest):
    """parent_job_id names a job of another task or method type, or `method` changes its adapter's shape (`param`)."""


class ModelNotAllowed(InvalidRequest):
    """The base model path is outside every configured model root."""


class JobLimitExceeded(InvalidRequest):
    """The job asks for more than a per-job limit of the tenant allows (e.g. steps over `max_job_steps`);
    `param` names the field."""


class ExportNotSupported(InvalidRequest):
    """The export format does not fit the job: its task, method or base architecture (GGUF: llama-architecture
    causal LMs; vLLM: LoRA adapters; merged safetensors: methods that merge into the base); `param` is `format`."""


class WebhookUrlNotAllowed(InvalidRequest):
    """The webhook URL is not http(s), does not resolve, or reaches an address this deployment does not allow
    (loopback, private, link-local ...: SSRF); `param` is `url`."""


# --------------------------------------------------------------------------- 5xx


class InternalError(ServiceError):
    """An unexpected fault of the service (details are in the server log only)."""

    status_code = 500
    type = "api_error"
    default_message = "Internal server error."


class RedisUnavailable(ServiceError):
    """Redis is unreachable; retry after `Retry-After` seconds."""

    status_code = 503
    type = "service_unavailable"
    default_message = "The state store (Redis) is unavailable; retry later."

    def __init__(
        self, message: str | None = None, param: str | None = None, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message, param, headers={"Retry-After": "5", **(headers or {})})


def error_responses(*errors: type[ServiceError]) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a route: each status code with the ErrorBody schema and the codes it can carry."""
    grouped: dict[int, list[type[ServiceError]]] = {}
    for err in errors:
        grouped.setdefault(err.status_code, []).append(err)
    return {
        status: {
            "model": ErrorBody,
            "description": " ".join(f"`{e.code()}`: {(e.__doc__ or '').strip()}" for e in errs),
            **({"headers": RATE_LIMIT_HEADERS} if status == TooManyRequests.status_code else {}),
        }
        for status, errs in sorted(grouped.items())
    }


def _integer_header(description: str) -> dict[str, Any]:
    return {"description": description, "schema": {"type": "integer"}}


# What every 429 carries (service/limits.py).
RATE_LIMIT_HEADERS = {
    "Retry-After": _integer_header("Seconds to wait before retrying."),
    "x-ratelimit-limit": _integer_header("The limit: the request burst, or the quota named by `param`."),
    "x-ratelimit-remaining": _integer_header("What is left of it now (0 on a 429)."),
    "x-ratelimit-reset": _integer_header("Seconds until the limit has room again."),
}
