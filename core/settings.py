"""Deployment settings from FTJOBS_* environment variables: the one reader, for the API and the worker alike.

`Settings.from_env()` is called when an app or a worker starts (never at import); an unset or empty variable
takes its default, a malformed one is a ValueError naming the variable, an out-of-range one a ValidationError.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ftjobs.client.models import TENANT_PATTERN

GIB = 1024**3
MIB = 1024**2
DAY_S = 24 * 3600


class Settings(BaseModel):
    """Everything the API and the workers need to know about their deployment."""

    model_config = ConfigDict(frozen=True)

    redis_url: str = "redis://127.0.0.1:6379/0"
    data_dir: Path = Field(description="Absolute path of the local data folder.")
    storage_url: str = Field(description="fsspec URL of the artifact store.")
    model_roots: tuple[Path, ...] = Field(description="Absolute, normalised folders base models may come from.")
    queue: str = "ftjobs-default"  # the training queue (one per hardware class)
    validate_queue: str = "ftjobs-validate"  # every job's file validation, served first by every worker
    # Hardware class -> training queue (FTJOBS_HARDWARE_QUEUES="cpu=ftjobs-cpu,gpu=ftjobs-gpu"): a job's
    # resources.hardware picks its queue; workers on that hardware serve it (`ftjobs worker --queue ftjobs-gpu`).
    hardware_queues: dict[str, str] = Field(default_factory=dict)
    max_upload_bytes: int = Field(default=GIB, ge=1)
    # One dataset row (a JSONL line, a CSV record, a Parquet row as JSON) at most, at upload and on the worker.
    max_row_bytes: int = Field(default=MIB, ge=1024)
    job_timeout_s: int = Field(default=7 * DAY_S, ge=1)  # RQ's limit for one training attempt
    max_attempts: int = Field(default=3, ge=1)  # attempts per job before it fails with `worker_lost`
    # Temporary files (half-written datasets, Parquet spools) untouched this long are a killed API's
    # leftovers and are swept; an upload still running on another replica keeps writing to its own.
    temp_max_age_s: int = Field(default=3600, ge=0)
    # API key -> tenant; empty = no auth, every request is tenant `default`. Kept out of reprs (secrets).
    api_keys: dict[str, str] = Field(default_factory=dict, repr=False)
    # Hashed keys with scopes and per-tenant limits (core/tenants.py), re-read when it changes; None = defaults.
    tenants_file: Path | None = None
    heartbeat_s: float = Field(default=5, gt=0)  # seconds between heartbeats/progress writes of a running job
    stale_after_s: float = Field(default=60, gt=0)  # a heartbeat older than this means the attempt's worker is gone
    checkpoint_s: float = Field(default=600, ge=0)  # seconds between resumable checkpoints (0: none by time)
    checkpoint_steps: int = Field(default=0, ge=0)  # also one every this many optimizer steps (0: none by steps)
    preempt_s: float = Field(default=30, ge=0)  # seconds a stopping worker gives its job to hand itself back
    # A worker's torch/OpenMP/MKL threads (None: every core it may use); `ftjobs up` gives each worker its share.
    torch_threads: int | None = Field(default=None, ge=1, le=1024)
    # Import torch, transformers and peft once in the worker, so each job's work horse forks with them loaded.
    preload: bool = True
    # Memory one training job may use, in MiB (None: what the worker's device has available); the memory
    # preflight (jobs/training/preflight.py) fails a job whose estimate clearly exceeds it.
    job_memory_mb: int | None = Field(default=None, ge=1)
    # Log lines of every process (core/logs.py): `text` for a terminal, `json` (one object a line) for a collector.
    log_format: Literal["text", "json"] = "text"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    sse_keepalive_s: float = Field(default=15, gt=0, le=300)  # seconds between keep-alives of an idle event stream
    sse_max_streams: int = Field(default=100, ge=1)  # open event streams per tenant, per API process
    # Webhooks: private/loopback/link-local targets only when allowed (all of them, or these CIDRs); seconds before
    # each retry (Standard Webhooks' schedule, about a day); one attempt's time limit; a crashed dispatcher's
    # deliveries are taken over after webhook_lease_s (longer than an attempt can take).
    webhook_allow_private: bool = False
    webhook_allow_cidrs: tuple[str, ...] = ()
    webhook_retry_s: tuple[float, ...] = (5, 300, 1800, 7200, 18000, 36000, 36000)
    webhook_timeout_s: float = Field(default=10, gt=0, le=60)
    webhook_lease_s: float = Field(default=60, gt=0)
    metrics_token: str = Field(default="", repr=False)  # when set, GET /metrics wants it as a bearer token
    # A finished job's events and metric points move from Redis to the artifact store this long after it ended
    # (core/retention.py; reads fall back to the store); 0 keeps them in Redis for ever.
    retention_s: int = Field(default=7 * DAY_S, ge=0)
    # Runs of one monitor kept in Redis (core/monitors.py); past it the oldest finished ones move to the store.
    monitor_runs_kept: int = Field(default=1000, ge=1)
    # Multi-node jobs (resources.nodes, jobs/training/nodes.py): the host other nodes reach this worker's
    # rendezvous at ("": its hostname), and how long a job's horse waits for its member nodes to join.
    advertise_host: str = ""
    node_join_timeout_s: float = Field(default=600, gt=0)

    @field_validator("webhook_allow_cidrs")
    @classmethod
    def _cidrs(cls, cidrs: tuple[str, ...]) -> tuple[str, ...]:
        for cidr in cidrs:
            ipaddress.ip_network(cidr, strict=False)  # ValueError naming the bad one
        return cidrs

    @field_validator("webhook_retry_s")
    @classmethod
    def _delays(cls, delays: tuple[float, ...]) -> tuple[float, ...]:
        if any(not 0 <= d <= DAY_S for d in delays):
            raise ValueError("each retry delay is 0 to 86400 s")
        return delays

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Build settings from `environ` (default: `os.environ`)."""
        env = os.environ if environ is None else environ
        data_dir = _path(_str(env, "FTJOBS_DATA_DIR") or "./.ftjobs")
        roots = [r for r in (_str(env, "FTJOBS_MODEL_ROOTS") or "").split(os.pathsep) if r.strip()]
        return cls(
            redis_url=_str(env, "FTJOBS_REDIS_URL") or "redis://127.0.0.1:6379/0",
            data_dir=data_dir,
            storage_url=_str(env, "FTJOBS_STORAGE_URL") or f"file://{data_dir}/store",
            model_roots=tuple(_path(r) for r in roots) or (data_dir / "models",),
            queue=_str(env, "FTJOBS_QUEUE") or "ftjobs-default",
            validate_queue=_str(env, "FTJOBS_VALIDATE_QUEUE") or "ftjobs-validate",
            hardware_queues=_pairs(env, "FTJOBS_HARDWARE_QUEUES"),
            max_upload_bytes=_int(env, "FTJOBS_MAX_UPLOAD_BYTES", GIB),
            max_row_bytes=_int(env, "FTJOBS_MAX_ROW_BYTES", MIB),
            job_timeout_s=_int(env, "FTJOBS_JOB_TIMEOUT_S", 7 * DAY_S),
            max_attempts=_int(env, "FTJOBS_MAX_ATTEMPTS", 3),
            temp_max_age_s=_int(env, "FTJOBS_TEMP_MAX_AGE_S", 3600),
            api_keys=parse_api_keys(_str(env, "FTJOBS_API_KEYS")),
            tenants_file=_path(raw) if (raw := _str(env, "FTJOBS_TENANTS_FILE")) else None,
            heartbeat_s=_float(env, "FTJOBS_HEARTBEAT_S", 5),
            stale_after_s=_float(env, "FTJOBS_STALE_AFTER_S", 60),
            checkpoint_s=_float(env, "FTJOBS_CHECKPOINT_S", 600),
            checkpoint_steps=_int(env, "FTJOBS_CHECKPOINT_STEPS", 0),
            preempt_s=_float(env, "FTJOBS_PREEMPT_S", 30),
            torch_threads=_int(env, "FTJOBS_TORCH_THREADS", 0) or None,
            preload=_flag(env, "FTJOBS_PRELOAD", default=True),
            job_memory_mb=_int(env, "FTJOBS_JOB_MEMORY_MB", 0) or None,
            log_format=(_str(env, "FTJOBS_LOG_FORMAT") or "text").lower(),  # type: ignore[arg-type]
            log_level=(_str(env, "FTJOBS_LOG_LEVEL") or "INFO").upper(),  # type: ignore[arg-type]
            sse_keepalive_s=_float(env, "FTJOBS_SSE_KEEPALIVE_S", 15),
            sse_max_streams=_int(env, "FTJOBS_SSE_MAX_STREAMS", 100),
            webhook_allow_private=_flag(env, "FTJOBS_WEBHOOK_ALLOW_PRIVATE"),
            webhook_allow_cidrs=tuple(_list(env, "FTJOBS_WEBHOOK_ALLOW_CIDRS")),
            webhook_retry_s=_floats(env, "FTJOBS_WEBHOOK_RETRY_S") or (5, 300, 1800, 7200, 18000, 36000, 36000),
            webhook_timeout_s=_float(env, "FTJOBS_WEBHOOK_TIMEOUT_S", 10),
            webhook_lease_s=_float(env, "FTJOBS_WEBHOOK_LEASE_S", 60),
            metrics_token=_str(env, "FTJOBS_METRICS_TOKEN"),
            retention_s=_int(env, "FTJOBS_RETENTION_S", 7 * DAY_S),
            monitor_runs_kept=_int(env, "FTJOBS_MONITOR_RUNS_KEPT", 1000),
            advertise_host=_str(env, "FTJOBS_ADVERTISE_HOST"),
            node_join_timeout_s=_float(env, "FTJOBS_NODE_JOIN_TIMEOUT_S", 600),
        )

    def training_queue(self, hardware: str | None) -> str | None:
        """The training queue of a hardware class (None: the class is not served here); no class: `queue`."""
        return self.queue if hardware is None else self.hardware_queues.get(hardware)

    @property
    def auth_enabled(self) -> bool:
        """Keys from FTJOBS_API_KEYS or a tenants file (whose keys are only known once it is read)."""
        return bool(self.api_keys) or self.tenants_file is not None


def _str(env: Mapping[str, str], name: str) -> str:
    """The variable without surrounding blanks; "" when unset."""
    return (env.get(name) or "").strip()


def _path(raw: str) -> Path:
    """The one path rule (data folder, model roots): `~` expanded, absolute, normalised, symlinks kept (the API
    compares requested model paths with the roots as written)."""
    return Path(os.path.normpath(os.path.abspath(os.path.expanduser(raw.strip()))))


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = _str(env, name)
    if not raw:
        return default
    try:
        return int(raw.replace("_", ""))  # 1_000_000 reads as in Python
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {raw!r}") from None


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = _str(env, name)
    if not raw:
        return default
    try:
        return float(raw.replace("_", ""))
    except ValueError:
        raise ValueError(f"{name} must be a number, got {raw!r}") from None


def _flag(env: Mapping[str, str], name: str, default: bool = False) -> bool:
    raw = _str(env, name).lower()
    if not raw:
        return default
    if raw in ("0", "false", "no"):
        return False
    if raw in ("1", "true", "yes"):
        return True
    raise ValueError(f"{name} must be 1 or 0, got {raw!r}")


def _list(env: Mapping[str, str], name: str) -> list[str]:
    """A comma-separated variable's items (blanks dropped)."""
    return [item.strip() for item in _str(env, name).split(",") if item.strip()]


def _pairs(env: Mapping[str, str], name: str) -> dict[str, str]:
    """A comma-separated variable of `key=value` items, as a dict (blanks around each part dropped)."""
    return {key.strip(): value.strip() for key, _, value in (item.partition("=") for item in _list(env, name))}


def _floats(env: Mapping[str, str], name: str) -> tuple[float, ...]:
    try:
        return tuple(float(item) for item in _list(env, name))
    except ValueError:
        raise ValueError(f"{name} must be comma-separated numbers, got {_str(env, name)!r}") from None


def parse_api_keys(raw: str) -> dict[str, str]:
    """Parse `key1:tenant1,key2:tenant2` into {key: tenant}; the tenant names are checked."""
    keys: dict[str, str] = {}
    for item in raw.split(","):
        if not item.strip():
            continue
        key, sep, tenant = item.strip().rpartition(":")
        if not sep or not key or not re.fullmatch(TENANT_PATTERN, tenant):
            # Never echo the key itself: it is a secret.
            raise ValueError(f"FTJOBS_API_KEYS: each entry must be key:tenant with tenant matching {TENANT_PATTERN}")
        keys[key] = tenant
    return keys
