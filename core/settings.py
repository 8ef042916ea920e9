"""Deployment settings from FTJOBS_* environment variables: the one reader, for the API and the worker alike.

`Settings.from_env()` is called when an app or a worker starts (never at import); an unset or empty variable
takes its default, a malformed one is a ValueError naming the variable, an out-of-range one a ValidationError.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

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
        )

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
