"""`client.exports`: a succeeded job's weights exported for serving (`/v1/jobs/{job_id}/exports`), for both clients.

export = ftjobs.exports.create(job.id, format="gguf", quantization="q8_0")
export = ftjobs.exports.wait(job.id, export.id)          # succeeded or failed (its `error` says why)
ftjobs.exports.download(job.id, export.id, "served/")    # every file, sha256-checked
"""

from __future__ import annotations

import builtins
import os
import time
import uuid
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import quote

import httpx

from ftjobs.client import errors
from ftjobs.client.base import Plan, Save, Sleep
from ftjobs.client.models.exports import Export, ExportList, ExportStatus
from ftjobs.client.models.jobs import Artifact
from ftjobs.client.resources import Plans, _seg

DONE = (ExportStatus.succeeded, ExportStatus.failed)


class ExportFailed(errors.FtjobsError):
    """`wait(..., raise_on_failure=True)`: the export failed; `.export.error` says why."""

    def __init__(self, export: Export) -> None:
        self.export = export
        reason = export.error.message if export.error else "no reason recorded"
        super().__init__(f"export {export.id} of job {export.job_id} failed: {reason}")


class ExportWaitTimeout(errors.FtjobsError):
    def __init__(self, export: Export, timeout: float) -> None:
        self.export = export
        super().__init__(f"export {export.id} still {export.status.value} after {timeout:g} s")


class ExportsPlans(Plans):
    def create(
        self, job_id: str, *, format: str, dtype: str | None = None, quantization: str | None = None,
        name: str | None = None,
    ) -> Plan[Export]:  # fmt: skip
        """Start an export of a succeeded job (`safetensors`, `gguf` or `vllm`); a worker writes it."""
        body: dict[str, Any] = {"format": format}
        body.update({k: v for k, v in (("dtype", dtype), ("quantization", quantization), ("name", name)) if v})
        return (yield from self._core._post(f"/v1/jobs/{_seg(job_id)}/exports", Export, json=body))

    def list(self, job_id: str) -> Plan[ExportList]:
        return (yield from self._core._get(f"/v1/jobs/{_seg(job_id)}/exports", ExportList))

    def get(self, job_id: str, export_id: str) -> Plan[Export]:
        return (yield from self._core._get(f"/v1/jobs/{_seg(job_id)}/exports/{_seg(export_id)}", Export))

    def wait(
        self, job_id: str, export_id: str, *, timeout: float | None = None, poll_interval: float = 1.0,
        raise_on_failure: bool = False,
    ) -> Plan[Export]:  # fmt: skip
        """Poll until the export succeeded or failed; `ExportWaitTimeout` after `timeout` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            export = yield from self.get(job_id, export_id)
            if export.status in DONE:
                if raise_on_failure and export.status is ExportStatus.failed:
                    raise ExportFailed(export)
                return export
            delay = poll_interval
            if deadline is not None and timeout is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise ExportWaitTimeout(export, timeout)
                delay = min(delay, remaining)
            yield Sleep(delay)

    def download(self, job_id: str, export_id: str, dest_dir: str | os.PathLike[str]) -> Plan[builtins.list[Path]]:
        """Every file of a succeeded export into `dest_dir` (names keep their folders), each checked against its
        sha256 and size before it is renamed into place."""
        export = yield from self.get(job_id, export_id)
        paths = []
        for f in export.files:
            relative = PurePosixPath(f.name)
            if relative.is_absolute() or ".." in relative.parts or not relative.parts:
                raise errors.InvalidResponse(f"export file name escapes {dest_dir}: {f.name!r}")
            target = Path(dest_dir).joinpath(*relative.parts)
            paths.append((yield from self._download(job_id, export_id, f, target)))
        return paths

    def _download(self, job_id: str, export_id: str, f: Artifact, target: Path) -> Plan[Path]:
        target.parent.mkdir(parents=True, exist_ok=True)
        part = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.part")
        path = f"/v1/jobs/{_seg(job_id)}/exports/{_seg(export_id)}/files/{quote(f.name, safe='/')}"
        response = yield from self._core._request("GET", path, stream=True)
        try:
            try:
                digest, size = yield Save(response, part)
            except httpx.TransportError as exc:
                raise errors.APIConnectionError(f"download of {f.name} broke off: {exc}") from exc
            if digest != f.sha256 or size != f.bytes:
                raise errors.ChecksumMismatch(f.name, f"{f.sha256} ({f.bytes} bytes)", f"{digest} ({size} bytes)")
            os.replace(part, target)
        finally:
            part.unlink(missing_ok=True)
        return target


class Exports:
    """`client.exports`: create, list, get, wait for and download a job's exports for serving."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self._plans = ExportsPlans(client)

    def create(
        self, job_id: str, *, format: str, dtype: str | None = None, quantization: str | None = None,
        name: str | None = None,
    ) -> Export:  # fmt: skip
        """Start an export of a succeeded job (`safetensors`, `gguf` or `vllm`); a worker writes it."""
        plan = self._plans.create(job_id, format=format, dtype=dtype, quantization=quantization, name=name)
        export: Export = self._client._run(plan)
        return export

    def list(self, job_id: str) -> ExportList:
        exports: ExportList = self._client._run(self._plans.list(job_id))
        return exports

    def get(self, job_id: str, export_id: str) -> Export:
        export: Export = self._client._run(self._plans.get(job_id, export_id))
        return export

    def wait(
        self, job_id: str, export_id: str, *, timeout: float | None = None, poll_interval: float = 1.0,
        raise_on_failure: bool = False,
    ) -> Export:  # fmt: skip
        plan = self._plans.wait(job_id, export_id, timeout=timeout, poll_interval=poll_interval,
                                raise_on_failure=raise_on_failure)  # fmt: skip
        export: Export = self._client._run(plan)
        return export

    def download(self, job_id: str, export_id: str, dest_dir: str | os.PathLike[str]) -> builtins.list[Path]:
        paths: builtins.list[Path] = self._client._run(self._plans.download(job_id, export_id, dest_dir))
        return paths


class AsyncExports:
    """`AsyncClient.exports`: as `Exports`, awaitable."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self._plans = ExportsPlans(client)

    async def create(
        self, job_id: str, *, format: str, dtype: str | None = None, quantization: str | None = None,
        name: str | None = None,
    ) -> Export:  # fmt: skip
        plan = self._plans.create(job_id, format=format, dtype=dtype, quantization=quantization, name=name)
        export: Export = await self._client._run(plan)
        return export

    async def list(self, job_id: str) -> ExportList:
        exports: ExportList = await self._client._run(self._plans.list(job_id))
        return exports

    async def get(self, job_id: str, export_id: str) -> Export:
        export: Export = await self._client._run(self._plans.get(job_id, export_id))
        return export

    async def wait(
        self, job_id: str, export_id: str, *, timeout: float | None = None, poll_interval: float = 1.0,
        raise_on_failure: bool = False,
    ) -> Export:  # fmt: skip
        plan = self._plans.wait(job_id, export_id, timeout=timeout, poll_interval=poll_interval,
                                raise_on_failure=raise_on_failure)  # fmt: skip
        export: Export = await self._client._run(plan)
        return export

    async def download(self, job_id: str, export_id: str, dest_dir: str | os.PathLike[str]) -> builtins.list[Path]:
        paths: builtins.list[Path] = await self._client._run(self._plans.download(job_id, export_id, dest_dir))
        return paths
