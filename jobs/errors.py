"""Why a job failed, as exceptions that carry the `JobError` code the record will show."""

from __future__ import annotations

from ftjobs.client.models import JobError


class JobFailed(Exception):
    """A failure the caller can understand; `code` and `param` go into the job's `error`."""

    code = "internal_error"

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param

    def to_error(self) -> JobError:
        return JobError(code=self.code, message=self.message, param=self.param)


class ModelNotFound(JobFailed):
    code = "model_not_found"


class DataError(JobFailed):
    """A bad row, a missing field, too few examples or a label problem in a training/validation file."""

    code = "invalid_data"


class RowTooLarge(DataError):
    """A row (line) of a training/validation file is longer than the row limit (FTJOBS_MAX_ROW_BYTES)."""

    code = "row_too_large"


class InvalidMethod(JobFailed):
    """The method does not fit the model (e.g. LoRA target modules the architecture lacks)."""

    code = "invalid_method"


class UnsupportedMethod(JobFailed):
    """The method needs hardware or a package this worker lacks (e.g. 4-bit QLoRA without CUDA + bitsandbytes)."""

    code = "unsupported_method"


class InvalidModel(JobFailed):
    """The model folder exists but transformers cannot load it (or its tokenizer)."""

    code = "invalid_model"


class IntegrationUnavailable(JobFailed):
    """The request asks for an experiment tracker whose package the worker does not have."""

    code = "integration_unavailable"


class JobLimitExceeded(JobFailed):
    """The job passed one of its tenant's per-job limits (steps, training tokens, training wall time)."""

    code = "job_limit_exceeded"
