"""Logging for every ftjobs process (API, worker, `ftjobs up`, webhook dispatcher): one setup, two formats.

`FTJOBS_LOG_FORMAT=text` (the default; read by core/settings.py) prints `time level logger [request_id job_id] message`;
`json` (the container images' default) prints one JSON object per line with `time`, `level`, `logger`,
`message` and, where known, `request_id`, `job_id` and `tenant`. Those come from context variables
(`bind`): the API's request-id middleware sets the request id, the worker binds the job it runs, so every
line written meanwhile carries them without each call passing them along. Third-party chatter (rq's per-job
INFO lines, httpx's request lines, uvicorn's access log, progress bars) is turned down here: a job's own
story is in its events, not in the log.
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from ftjobs.core.settings import Settings

CONTEXT_FIELDS = ("request_id", "job_id", "tenant")

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("ftjobs_request_id", default=None)
job_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("ftjobs_job_id", default=None)
tenant_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("ftjobs_tenant", default=None)
_VARS = {"request_id": request_id_var, "job_id": job_id_var, "tenant": tenant_var}

# Loggers that speak too much at INFO for an operator: their warnings still come through.
QUIET_LOGGERS = {
    "rq.worker": logging.WARNING,  # "default: Job OK (...)", "Result is kept for 500 seconds" per job
    "rq.queue": logging.WARNING,
    "rq.scheduler": logging.WARNING,
    "httpx": logging.WARNING,  # one INFO line per request the webhook dispatcher sends
    "httpcore": logging.WARNING,
    "uvicorn.access": logging.WARNING,  # replaced by the API's own access log (service/requestid.py)
    "transformers": logging.WARNING,
    "datasets": logging.WARNING,
    "filelock": logging.WARNING,
    "urllib3": logging.WARNING,
    "multipart": logging.WARNING,
    "python_multipart": logging.WARNING,
}


def current_request_id() -> str | None:
    return request_id_var.get()


@contextmanager
def bind(**fields: str | None) -> Iterator[None]:
    """Set `request_id` / `job_id` / `tenant` for every log line written inside the block."""
    tokens = [(_VARS[k], _VARS[k].set(v)) for k, v in fields.items() if k in _VARS]
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class ContextFilter(logging.Filter):
    """Copy the bound context onto each record (`record.request_id` ...), None where unknown; drop ANSI colours,
    and transformers' LOAD REPORT table (a new task head is expected, not a warning) unless at DEBUG."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith("transformers") and "LOAD REPORT" in str(record.msg):
            return logging.getLogger().isEnabledFor(logging.DEBUG)
        if isinstance(record.msg, str) and "\x1b[" in record.msg:
            record.msg = ANSI.sub("", record.msg)
        for name, var in _VARS.items():
            if getattr(record, name, None) is None:
                setattr(record, name, var.get())
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line; context fields only when known; an exception as its formatted text."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                entry[name] = value
        for name in ("component", "method", "path", "status", "duration_ms", "client"):
            value = getattr(record, name, None)
            if value is not None:
                entry[name] = value
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        # ASCII only: a path of U+2028 or U+0085 (a fuzzer's) must not split the line for a line-based collector
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    """`2026-01-01 12:00:00,123 INFO ftjobs.service [req=... job=...] message`."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s%(context)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        known = [f"{k}={getattr(record, k)}" for k in CONTEXT_FIELDS if getattr(record, k, None) is not None]
        record.context = f" [{' '.join(known)}]" if known else ""
        return super().format(record)


def make_handler(fmt: str = "text", stream: Any = None) -> logging.Handler:
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(ContextFilter())
    return handler


def setup_logging(component: str, settings: Settings | None = None) -> None:
    """Configure this process's root logger: our handler (replacing any), third parties quieter.

    `component` (api, worker, webhooks) is recorded so lines of several processes sharing one stream
    (`ftjobs up`) can be told apart; the format and level are the settings' (FTJOBS_LOG_FORMAT, FTJOBS_LOG_LEVEL)."""
    fmt, level = (settings.log_format, settings.log_level) if settings is not None else ("text", "INFO")
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    handler = make_handler(fmt)
    handler.addFilter(_Component(component))
    root.addHandler(handler)
    root.setLevel(level)
    for name, quiet in QUIET_LOGGERS.items():
        logging.getLogger(name).setLevel(quiet)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        # uvicorn's own handlers would print a second, differently formatted copy: let lines reach ours
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    quiet_progress_bars()


def quiet_progress_bars() -> None:
    """No tqdm bars or ANSI tables from transformers/datasets in a log: set before they are imported."""
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "warning")
    os.environ.setdefault("DISABLE_TQDM", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")


class _Component(logging.Filter):
    def __init__(self, component: str) -> None:
        super().__init__()
        self.component = component

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "component", None) is None:
            record.component = self.component
        return True


def bind_job(job_id: str | None, tenant: str | None, request_id: str | None = None) -> None:
    """Set the job, tenant and request id for the lines that follow (the worker, around each job; a forked horse
    inherits). `request_id`: the API request that created (or resumed) the job, carried in its RQ job's meta."""
    job_id_var.set(job_id)
    tenant_var.set(tenant)
    request_id_var.set(request_id)
