"""Tenants, their API keys (stored as hashes, with scopes) and their limits: the one reader, for API and worker.

Two sources, merged:

- `FTJOBS_API_KEYS=key1:tenant1,key2:tenant2` (the simple form): every key gets every scope except `admin`;
  the keys are hashed when read and never kept in the clear.
- `FTJOBS_TENANTS_FILE=/path/tenants.toml` (the full form), re-read when it changes (key rotation and new limits
  without a restart):

      [defaults]                    # the deployment's limits for every tenant (built-in defaults otherwise)
      max_active_jobs = 200
      requests_per_second = 20

      [tenants.acme]                # per-tenant overrides of any limit
      max_running_jobs = 4

      [[tenants.acme.keys]]
      sha256 = "9f86d0..."          # hex sha256 of the key (`ftjobs keys new` prints a key and this line)
      scopes = ["read", "submit"]   # read, submit, admin
      name = "ci"                   # shown in logs, never the key

A limit of `None` (or absent) means "no limit" only where the built-in default is `None`; a tenant override
replaces the deployment default field by field.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import threading
import time
import tomllib
from collections.abc import Mapping
from enum import StrEnum
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ftjobs.client.models import TENANT_PATTERN

log = logging.getLogger("ftjobs.tenants")
GIB = 1024**3
RELOAD_CHECK_S = 1.0  # how often the tenants file's mtime is looked at


class Scope(StrEnum):
    read = "read"  # GET routes: files, jobs, events, artifacts, models
    submit = "submit"  # uploads, job creation, cancel, deletes
    admin = "admin"  # deployment views (queues, workers) and other tenants' limits


ALL_SCOPES = frozenset(Scope)
DEFAULT_SCOPES = frozenset({Scope.read, Scope.submit})


class TenantLimits(BaseModel):
    """Per-tenant limits. `None` = unlimited."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # Admission (API, 429 when over)
    max_active_jobs: int | None = Field(default=500, ge=1, description="Jobs validating, queued or running.")
    max_files: int | None = Field(default=10_000, ge=1, description="Files stored.")
    max_stored_bytes: int | None = Field(default=100 * GIB, ge=1, description="Bytes of files stored.")
    max_upload_bytes_per_day: int | None = Field(default=50 * GIB, ge=1, description="Upload bytes per UTC day.")
    requests_per_second: float | None = Field(default=50, gt=0, description="Sustained API requests per second.")
    burst: int | None = Field(default=None, ge=1, description="Requests allowed at once (default 2x the rate).")
    # Scheduling (the queue admission: a tenant's jobs beyond this wait outside RQ)
    max_running_jobs: int | None = Field(default=None, ge=1, description="Jobs training at once.")
    # Per job (enforced by the worker; a request asking for more is refused by the API)
    max_job_steps: int | None = Field(default=1_000_000, ge=1, description="Optimizer steps per job.")
    max_job_tokens: int | None = Field(default=None, ge=1, description="Training tokens per job (all epochs).")
    max_job_wall_s: float | None = Field(  # a day by default: no job holds a worker forever
        default=86_400, gt=0, description="Wall time of one job's training (seconds, every attempt together)."
    )


class ApiKey(BaseModel):
    model_config = ConfigDict(frozen=True)

    tenant: str
    scopes: frozenset[Scope]
    name: str = ""


class _KeyEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    scopes: list[Scope] = Field(default_factory=lambda: sorted(DEFAULT_SCOPES))
    name: str = Field(default="", max_length=100)


class _TenantEntry(TenantLimits):
    model_config = ConfigDict(frozen=True, extra="forbid")

    keys: list[_KeyEntry] = Field(default_factory=list)


class _TenantsFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    defaults: dict[str, object] = Field(default_factory=dict)
    tenants: dict[str, dict[str, object]] = Field(default_factory=dict)


def key_hash(key: str) -> str:
    """The stored form of an API key: hex sha256 (keys are random, so a fast hash is the right one)."""
    return hashlib.sha256(key.encode()).hexdigest()


class Tenants:
    """One snapshot: keys by hash, deployment defaults, per-tenant overrides."""

    def __init__(
        self,
        keys: Mapping[str, ApiKey] | None = None,
        defaults: TenantLimits | None = None,
        overrides: Mapping[str, Mapping[str, object]] | None = None,
    ) -> None:
        self.keys = dict(keys or {})
        self.defaults = defaults or TenantLimits()
        self.overrides = {t: dict(o) for t, o in (overrides or {}).items()}
        self._limits: dict[str, TenantLimits] = {}  # merged once per snapshot: every API request asks

    @property
    def auth_enabled(self) -> bool:
        return bool(self.keys)

    def key(self, presented: str) -> ApiKey | None:
        """The key a caller presented, or None."""
        return self.keys.get(key_hash(presented))

    def limits(self, tenant: str) -> TenantLimits:
        override = self.overrides.get(tenant)
        if not override:
            return self.defaults
        if (merged := self._limits.get(tenant)) is None:
            merged = self._limits[tenant] = self.defaults.model_copy(update=override)
        return merged


def parse(
    text: str,
    plain_keys: Mapping[str, str] | None = None,
    *,
    source: str = "tenants file",
    hashed_keys: Mapping[str, str] | None = None,
) -> Tenants:
    """A Tenants snapshot from the TOML text of a tenants file plus FTJOBS_API_KEYS' {key: tenant} (or the same
    already hashed: {sha256: tenant}). ValueError naming the entry when anything is malformed (never a key)."""
    try:
        doc = _TenantsFile.model_validate(tomllib.loads(text) if text.strip() else {})
        defaults = TenantLimits.model_validate(doc.defaults)
    except (tomllib.TOMLDecodeError, ValidationError) as exc:
        raise ValueError(f"{source}: {_short(exc)}") from None
    keys: dict[str, ApiKey] = {}
    overrides: dict[str, dict[str, object]] = {}
    for tenant, raw in doc.tenants.items():
        if not re.fullmatch(TENANT_PATTERN, tenant):
            raise ValueError(f"{source}: tenant name {tenant!r} must match {TENANT_PATTERN}")
        try:
            entry = _TenantEntry.model_validate(raw)
        except ValidationError as exc:
            raise ValueError(f"{source}: tenants.{tenant}: {_short(exc)}") from None
        overrides[tenant] = entry.model_dump(exclude={"keys"}, exclude_unset=True)
        for k in entry.keys:
            keys[k.sha256] = ApiKey(tenant=tenant, scopes=frozenset(k.scopes), name=k.name)
    hashed = {**{key_hash(k): t for k, t in (plain_keys or {}).items()}, **(hashed_keys or {})}
    for digest, tenant in hashed.items():
        keys.setdefault(digest, ApiKey(tenant=tenant, scopes=DEFAULT_SCOPES, name="FTJOBS_API_KEYS"))
    return Tenants(keys, defaults, overrides)


def _short(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        return f"{where}: {first['msg']}" if where else str(first["msg"])
    return str(exc).splitlines()[0]


class TenantsSource:
    """The current Tenants of a deployment; the file is re-read when its mtime or size changes (checked at most
    every RELOAD_CHECK_S). A file that became malformed keeps the last good snapshot and logs why."""

    def __init__(self, path: Path | None, plain_keys: Mapping[str, str] | None = None) -> None:
        self.path = path
        self.hashed_keys = {key_hash(k): t for k, t in (plain_keys or {}).items()}  # never kept in the clear
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._checked = 0.0
        self._current = self._load(initial=True)

    def _read_stamp(self) -> tuple[int, int] | None:
        if self.path is None:
            return None
        st = os.stat(self.path)
        return (st.st_mtime_ns, st.st_size)

    def _load(self, *, initial: bool = False) -> Tenants:
        if self.path is None:
            return parse("", source="FTJOBS_API_KEYS", hashed_keys=self.hashed_keys)
        try:
            stamp = self._read_stamp()
            text = self.path.read_text(encoding="utf-8")
        except OSError as exc:
            if initial:
                raise ValueError(f"FTJOBS_TENANTS_FILE: cannot read {self.path}: {exc.strerror}") from None
            raise
        tenants = parse(text, source=f"FTJOBS_TENANTS_FILE ({self.path.name})", hashed_keys=self.hashed_keys)
        self._stamp = stamp
        return tenants

    @property
    def auth_enabled(self) -> bool:
        """A tenants file or FTJOBS_API_KEYS turns auth on for good: a file that lost its last key locks callers
        out rather than letting everyone in as `default`."""
        return self.path is not None or bool(self.hashed_keys)

    def current(self) -> Tenants:
        if self.path is None:
            return self._current
        now = time.monotonic()
        if now - self._checked < RELOAD_CHECK_S:
            return self._current
        with self._lock:
            self._checked = now
            try:
                if self._read_stamp() != self._stamp:
                    self._current = self._load()
                    log.info("tenants file %s reloaded: %d key(s)", self.path, len(self._current.keys))
            except (OSError, ValueError) as exc:
                log.error("tenants file %s not reloaded, keeping the previous one: %s", self.path, exc)
        return self._current
