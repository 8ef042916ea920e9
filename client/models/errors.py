"""The one error body of every non-2xx response, and the problems of an uploaded file it can list."""

from __future__ import annotations

from pydantic import BaseModel, Field


class FileProblem(BaseModel):
    """One problem of an uploaded file: where (line, field), what (a stable code) and why (message)."""

    line: int | None = Field(
        default=None, description="1-based line of the file as uploaded (the CSV's line; a Parquet file's row)."
    )
    field: str | None = Field(default=None, description="The row field at fault, e.g. `label`, `messages[1].role`.")
    code: str = Field(
        description="`invalid_json`, `invalid_utf8`, `not_an_object`, `unknown_shape`, `missing_field`, "
        "`invalid_type`, `empty_content`, `unknown_role`, `no_assistant_turn`, `label_missing`, "
        "`mixed_formats`, `line_too_long` (over FTJOBS_MAX_ROW_BYTES), `value_too_large` (a Parquet page's values over "
        "it, from the file's metadata), `invalid_csv`, `invalid_parquet`, `empty_file`."
    )
    message: str


class ErrorDetail(BaseModel):
    code: str = Field(description="Stable machine-readable code, e.g. `job_not_found`.")
    message: str = Field(description="Human-readable explanation; never a traceback.")
    param: str | None = Field(default=None, description="The request field or file line that is wrong.")
    type: str = Field(
        default="invalid_request_error",
        description="`invalid_request_error` (4xx), `api_error` (5xx) or `service_unavailable`.",
    )
    details: list[FileProblem] | None = Field(
        default=None, description="invalid_file only: the first problems of the file, each with line, field, code."
    )
    total: int | None = Field(default=None, description="invalid_file only: how many problems the file has in all.")
    request_id: str | None = Field(
        default=None, description="The request's id (also the `X-Request-ID` response header): quote it to an operator."
    )


class ErrorBody(BaseModel):
    """The one error body of every non-2xx response."""

    error: ErrorDetail
