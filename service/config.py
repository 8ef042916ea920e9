"""Service settings, read from FTJOBS_* environment variables when the app is created (never at import)."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

from pydantic import BaseModel, ConfigDict, Field

from ftjobs.client.models import TENANT_PATTERN

GIB = 1024**3
DAY_S = 24 * 3600


class Settings(BaseModel):
    """Everything the API needs to know about its deployment."""

    model_config = ConfigDict(frozen=True)

    redis_url: str = "redis://127.0.0.1:6379/0"
    data_dir: str = Field(description="Absolute path of the local data folder.")
    storage_url: str = Field(description="fsspec URL of the artifact store.")
    model_roots: tuple[str, ...] = Field(
        description="Absolute, normalised folders base models may come from."
    )
    queue: str = "ftjobs-default"
    validate_queue: str = "ftjobs-validate"  # every job's file validation, served first by every worker
    max_upload_bytes: int = Field(default=GIB, ge=1)
    job_timeout_s: int = Field(default=7 * DAY_S, ge=1)
    max_attempts: int = Field(default=3, ge=1)
    # Temporary files (half-written datasets, Parquet spools) untouched this long are a killed API's
    # leftovers and are swept; an upload still running on another replica keeps writing to its own.
    temp_max_age_s: int = Field(default=3600, ge=0)
    # API key -> tenant; empty = no auth, every request is tenant `default`. Kept out of reprs (secrets).
    api_keys: dict[str, str] = Field(default_factory=dict, repr=False)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Build settings from `environ` (default: `os.environ`); unset variables take their defaults."""
        env = os.environ if environ is None else environ
        data_dir = os.path.abspath(env.get("FTJOBS_DATA_DIR") or "./.ftjobs")
        roots = [r for r in (env.get("FTJOBS_MODEL_ROOTS") or "").split(os.pathsep) if r.strip()]
        return cls(
            redis_url=env.get("FTJOBS_REDIS_URL") or "redis://127.0.0.1:6379/0",
            data_dir=data_dir,
            storage_url=env.get("FTJOBS_STORAGE_URL") or f"file://{data_dir}/store",
            model_roots=tuple(os.path.normpath(os.path.abspath(r.strip())) for r in roots)
            or (os.path.join(data_dir, "models"),),
            queue=env.get("FTJOBS_QUEUE") or "ftjobs-default",
            validate_queue=env.get("FTJOBS_VALIDATE_QUEUE") or "ftjobs-validate",
            max_upload_bytes=_int(env, "FTJOBS_MAX_UPLOAD_BYTES", GIB),
            job_timeout_s=_int(env, "FTJOBS_JOB_TIMEOUT_S", 7 * DAY_S),
            max_attempts=_int(env, "FTJOBS_MAX_ATTEMPTS", 3),
            temp_max_age_s=_int(env, "FTJOBS_TEMP_MAX_AGE_S", 3600),
            api_keys=parse_api_keys(env.get("FTJOBS_API_KEYS") or ""),
        )

    @property
    def auth_enabled(self) -> bool:
        return bool(self.api_keys)


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        return int(raw.strip().replace("_", ""))
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {raw!r}") from None


def parse_api_keys(raw: str) -> dict[str, str]:
    """Parse `key1:tenant1,key2:tenant2` into {key: tenant}; the tenant names are checked."""
    keys: dict[str, str] = {}
    for item in raw.split(","):
        if not item.strip():
            continue
        key, sep, tenant = item.strip().rpartition(":")
        if not sep or not key or not re.fullmatch(TENANT_PATTERN, tenant):
            # Never echo the key itself: it is a secret.
            raise ValueError(
                f"FTJOBS_API_KEYS: each entry must be key:tenant with tenant matching {TENANT_PATTERN}"
            )
        keys[key] = tenant
    return keys
