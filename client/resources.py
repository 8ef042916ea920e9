"""The API's operations, written once as plans (see client/base.py) and shared by both clients.

`FilesPlans` and `JobsPlans` mirror `/v1/files` and `/v1/jobs`; client/client.py turns each plan into
a `Client` method and an awaitable `AsyncClient` method with the same signature.
"""

from __future__ import annotations

import builtins
import json
import os
import time
import uuid
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import IO, Any
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ValidationError

from ftjobs.client import errors, sse
from ftjobs.client.base import BaseClient, Emit, LineStream, NextLine, Plan, Read, Save, Sleep, Stream, paginate
from ftjobs.client.models import (
    Artifact,
    ArtifactList,
    DataOptions,
    Event,
    EventList,
    EventType,
    FileList,
    FileObject,
    FileProfile,
    Health,
    Hyperparameters,
    Job,
    JobCreate,
    JobList,
    JobStatus,
    Method,
    MetricList,
    MetricPoint,
    ModelList,
    Task,
)
from ftjobs.client.models.jobs import TERMINAL_STATUSES
from ftjobs.client.models.resources import Resources
from ftjobs.client.transfers import CountingReader, Progress, relative_to_prefix, total_size

PathLike = str | os.PathLike[str]


def _seg(value: str) -> str:
    """One URL path segment (ids come from users: never let them add path parts)."""
    return quote(str(value), safe="")


def _jsonable(value: Any) -> Any:
    """A model as the fields it was given (the server fills the same defaults; a child job inherits what it
    leaves out from its parent), keeping a method's `type`."""
    if isinstance(value, BaseModel):
        body = value.model_dump(mode="json", exclude_unset=True)
        if "type" in type(value).model_fields:
            body["type"] = getattr(value, "type")  # noqa: B009 - BaseModel declares no `type`
        if isinstance(value, JobCreate) and "method" in body:
            body["method"]["type"] = value.method.type
        return body
    if isinstance(value, Mapping):
        return dict(value)
    return value


MAX_FRUITLESS_STREAMS = 3  # streams in a row cut (or ended) before their first event: then poll instead


def _stream_event(message: sse.Message, response: httpx.Response) -> Event:
    try:
        return Event.model_validate_json(message.data)
    except ValidationError as exc:
        raise errors.InvalidResponse(
            f"an event of {response.request.url.path} is not an Event ({exc.error_count()} errors)",
            status_code=response.status_code,
            code="invalid_response",
            body=message.data[:500],
            headers=response.headers,
        ) from exc


def _ends_job(event: Event) -> bool:
    """The status event that makes a job terminal (the server closes the stream after it)."""
    status = event.data.get("status") if event.type is EventType.status else None
    return status in TERMINAL_STATUSES


class Plans:
    def __init__(self, core: BaseClient) -> None:
        self._core = core


class ServicePlans(Plans):
    def health(self) -> Plan[Health]:
        """`GET /healthz`: the API process is up."""
        return (yield from self._core._get("/healthz", Health))

    def ready(self) -> Plan[Health]:
        """`GET /readyz`: the API can reach Redis (raises `ServiceUnavailable` when it cannot)."""
        return (yield from self._core._get("/readyz", Health))


class ModelsPlans(Plans):
    def list(self) -> Plan[ModelList]:
        """The base models this deployment may fine-tune; pass an `id` as a job's `model`."""
        return (yield from self._core._get("/v1/models", ModelList))


class FilesPlans(Plans):
    def upload(
        self, file: str | os.PathLike[str] | IO[bytes], *, purpose: str = "fine-tune", progress: Progress | None = None
    ) -> Plan[FileObject]:
        """Upload a JSONL, CSV or Parquet dataset (a path, or a binary file object); returns its `FileObject`.
        `progress(name, bytes sent, total)` is called as the file is read into the request."""
        if isinstance(file, str | os.PathLike):
            fh: IO[bytes] = open(file, "rb")  # closed below, also when the plan is abandoned
            owned = True
        else:
            fh, owned = file, False
        name = Path(str(getattr(fh, "name", "") or "data.jsonl")).name
        try:
            body: Any = fh if progress is None else CountingReader(fh, name, total_size(fh), progress)
            files = {"file": (name, body, "application/jsonl")}
            form = {"purpose": purpose}
            response = yield from self._core._request("POST", "/v1/files", files=files, data=form)
        finally:
            if owned:
                fh.close()
        return self._core._parse(response, FileObject)

    def get(self, file_id: str) -> Plan[FileObject]:
        """Fetch one uploaded file's metadata."""
        return (yield from self._core._get(f"/v1/files/{_seg(file_id)}", FileObject))

    def list(self, *, after: str | None = None, limit: int = 20, sha256: str | None = None) -> Plan[FileList]:
        """One page of uploaded files, newest first (`after`: a page's `last_id`; `sha256`: uploads of one file)."""
        params = {"after": after, "limit": limit, "sha256": sha256}
        return (yield from self._core._get("/v1/files", FileList, params))

    def find(self, sha256: str) -> Plan[FileObject | None]:
        """The newest upload whose bytes have this sha256 (hex), or None (also from a server without the filter)."""
        page = yield from self.list(limit=1, sha256=sha256.lower())
        return next((f for f in page.data if sha256.lower() in (f.source_sha256, f.sha256)), None)

    def profile(self, file_id: str) -> Plan[FileProfile]:
        """A dataset's profile: rows, columns, label distribution, length statistics, duplicates."""
        return (yield from self._core._get(f"/v1/files/{_seg(file_id)}/profile", FileProfile))


class JobsPlans(Plans):
    def create(
        self,
        request: JobCreate | None = None,
        /,
        *,
        model: str | None = None,
        training_file: str | None = None,
        task: Task | str | None = None,
        validation_file: str | None = None,
        method: Method | Mapping[str, Any] | None = None,
        parent_job_id: str | None = None,
        reference_file: str | None = None,
        group_field: str | None = None,
        hyperparameters: Hyperparameters | Mapping[str, Any] | None = None,
        data: DataOptions | Mapping[str, Any] | None = None,
        suffix: str | None = None,
        metadata: Mapping[str, str] | None = None,
        eval_generation_limit: int | None = None,
        eval_samples: int | None = None,
        integrations: builtins.list[str] | None = None,
        resources: Resources | Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> Plan[Job]:
        """Submit a fine-tuning job: a `JobCreate`, or its fields as keywords (the server validates them).

        Every submit carries an `Idempotency-Key` (a fresh uuid4 unless given), so a retried POST never
        creates a second job; pass your own key to make a re-run of your script return the same job.
        """
        fields = dict(locals())  # the keyword fields as given (nothing else is defined yet)
        for name in ("self", "request", "idempotency_key"):
            del fields[name]
        if request is not None:
            if any(v is not None for v in fields.values()):
                raise TypeError("jobs.create() takes a JobCreate or keyword fields, not both")
            body = _jsonable(request)
        elif model is None or training_file is None:
            raise TypeError("jobs.create() needs model= and training_file=")
        else:
            body = {k: _jsonable(v) for k, v in fields.items() if v is not None}
        key = idempotency_key or str(uuid.uuid4())
        return (yield from self._core._post("/v1/jobs", Job, json=body, idempotency_key=key))

    def get(self, job_id: str) -> Plan[Job]:
        """Fetch one job (status, progress, last metrics, results, error, artifacts)."""
        return (yield from self._core._get(f"/v1/jobs/{_seg(job_id)}", Job))

    def list(
        self, *, after: str | None = None, limit: int = 20, status: JobStatus | str | None = None
    ) -> Plan[JobList]:
        """One page of jobs, newest first, optionally only those in `status`."""
        params = {"after": after, "limit": limit, "status": status}
        return (yield from self._core._get("/v1/jobs", JobList, params))

    def cancel(self, job_id: str) -> Plan[Job]:
        """Ask a job to stop; a queued job is cancelled at once, a running one within seconds."""
        return (yield from self._core._post(f"/v1/jobs/{_seg(job_id)}/cancel", Job))

    def pause(self, job_id: str) -> Plan[Job]:
        """Pause a job: a queued one at once; a running one checkpoints at its next step, then is `paused`
        (until then it is `running` with `pause_requested`). Pausing a paused job returns it as it is."""
        return (yield from self._core._post(f"/v1/jobs/{_seg(job_id)}/pause", Job))

    def resume(self, job_id: str) -> Plan[Job]:
        """Resume a paused job: queued again, it continues from its checkpoint; `Conflict` unless it is paused."""
        return (yield from self._core._post(f"/v1/jobs/{_seg(job_id)}/resume", Job))

    def events(self, job_id: str, *, after: str | None = None, limit: int = 100) -> Plan[EventList]:
        """One page of a job's events, oldest first; `after` is the last event id already seen."""
        path = f"/v1/jobs/{_seg(job_id)}/events"
        return (yield from self._core._get(path, EventList, {"after": after, "limit": limit}))

    def follow(self, job_id: str, *, after: str | None = None, poll_interval: float = 1.0) -> Stream[Event]:
        """Yield a job's events as they arrive, oldest first, until the job is terminal and all are seen."""
        cursor, terminal_seen = after, False
        while True:
            cursor = yield from paginate(lambda after: self.events(job_id, after=after), cursor)
            if terminal_seen:
                return
            job = yield from self.get(job_id)
            if job.status.is_terminal:
                terminal_seen = True  # one more pass drains what was written before the final status
            else:
                yield Sleep(poll_interval)

    def stream_events(self, job_id: str, *, after: str | None = None, poll_interval: float = 1.0) -> Stream[Event]:
        """Yield a job's events as the server writes them (Server-Sent Events), oldest first, until the job is
        terminal and all are seen; `after` is the last event id already seen.

        A dropped connection is resumed with `Last-Event-ID` (nothing lost, nothing repeated). A server that
        answers without streaming, or streams cut again and again before an event arrives, are polled instead
        (`follow`, every `poll_interval` seconds).
        """
        path = f"/v1/jobs/{_seg(job_id)}/events"
        cursor, fruitless = after, 0
        while fruitless < MAX_FRUITLESS_STREAMS:
            headers = {"Accept": sse.MEDIA_TYPE, **({"Last-Event-ID": cursor} if cursor else {})}
            try:
                response = yield from self._core._request(
                    "GET", path, params={"stream": "true"}, headers=headers, stream=True
                )
            except errors.APIConnectionError:  # even after retries: polling will tell whether the API is gone
                fruitless += 1
                continue
            if not sse.is_event_stream(response):
                yield Read(response)
                break
            lines, decoder, delivered, ended = LineStream(response), sse.Decoder(), False, False
            try:
                while True:
                    try:
                        line = yield NextLine(lines)
                    except httpx.TransportError:
                        break  # cut: resume from the cursor
                    if line is None:
                        ended = True
                        break
                    message = decoder.feed(line)
                    if message is None:
                        continue
                    event = _stream_event(message, response)
                    cursor, delivered = event.id, True
                    yield Emit([event])
                    if _ends_job(event):
                        return
            finally:
                lines.abandon()
            if ended:  # closed without a terminal event: a restarting server, or a job finished before we came
                job = yield from self.get(job_id)
                if job.status.is_terminal:
                    yield from paginate(lambda after: self.events(job_id, after=after, limit=1000), cursor)
                    return
            fruitless = 0 if delivered else fruitless + 1
            if not delivered:
                yield Sleep(self._core._backoff(fruitless))
        yield from self.follow(job_id, after=cursor, poll_interval=poll_interval)

    def all_events(self, job_id: str, *, after: str | None = None) -> Stream[Event]:
        """Every event of a job written so far (after `after`), oldest first: `follow` without the wait."""
        yield from paginate(lambda after: self.events(job_id, after=after, limit=1000), after)

    def metrics(self, job_id: str, *, after: str | None = None, limit: int = 100) -> Plan[MetricList]:
        """One page of a job's metric points (train and eval), oldest first."""
        path = f"/v1/jobs/{_seg(job_id)}/metrics"
        return (yield from self._core._get(path, MetricList, {"after": after, "limit": limit}))

    def all_metrics(self, job_id: str) -> Stream[MetricPoint]:
        """Every metric point of a job (follows the pages)."""
        yield from paginate(lambda after: self.metrics(job_id, after=after, limit=1000))

    def artifacts(self, job_id: str) -> Plan[builtins.list[Artifact]]:
        """The files a job produced (names, sizes, sha256)."""
        listing = yield from self._core._get(f"/v1/jobs/{_seg(job_id)}/artifacts", ArtifactList)
        return listing.data

    def samples(self, job_id: str) -> Plan[builtins.list[dict[str, Any]]]:
        """Validation examples with reference and prediction, before and after training (eval_samples.jsonl).

        Classification rows hold `text`, `label` and `predicted_label`. A job that saved none (no
        validation data, `eval_samples=0`, not finished) raises `NotFound`.
        """
        path = f"/v1/jobs/{_seg(job_id)}/artifacts/eval_samples.jsonl"
        response = yield from self._core._request("GET", path)
        return [json.loads(line) for line in response.text.splitlines() if line.strip()]

    def download(
        self, job_id: str, name: str, dest: str | os.PathLike[str], *, progress: Progress | None = None
    ) -> Plan[Path]:
        """Download one artifact to `dest` (a file path, or an existing folder to put it in).

        The bytes go to a temporary file next to `dest`; their sha256 is checked against the
        `X-Content-SHA256` header and the artifact list before the file is renamed into place, so
        `dest` is never half-written. Raises `ChecksumMismatch` (and writes nothing) when they differ.
        `progress(name, bytes so far, total)` is called as the bytes arrive."""
        listing = yield from self.artifacts(job_id)
        expected = next((a for a in listing if a.name == name), None)
        target = Path(dest)
        if target.is_dir():
            target = target / PurePosixPath(name).name
        return (yield from self._download(job_id, name, target, expected, progress))

    def download_all(
        self, job_id: str, dest_dir: PathLike, *, prefix: str | None = None, progress: Progress | None = None
    ) -> Plan[builtins.list[Path]]:
        """Download every artifact whose name starts with `prefix` to `dest_dir/<name without the prefix>`.

        `prefix="adapter/"` writes `dest_dir/adapter_model.safetensors` and its neighbours, a folder
        `PeftModel.from_pretrained(dest_dir)` loads; with no prefix, names keep their folders. Each file is checked
        as in `download`; a mismatch stops at that file, leaving the ones before it in place.
        """
        paths = []
        for artifact in (yield from self.artifacts(job_id)):
            if prefix and not artifact.name.startswith(prefix):
                continue
            relative = relative_to_prefix(artifact.name, prefix)
            if relative.is_absolute() or ".." in relative.parts or not relative.parts:
                raise errors.InvalidResponse(f"artifact name escapes {dest_dir}: {artifact.name!r}")
            target = Path(dest_dir).joinpath(*relative.parts)
            paths.append((yield from self._download(job_id, artifact.name, target, artifact, progress)))
        return paths

    def _download(
        self, job_id: str, name: str, target: Path, expected: Artifact | None, progress: Progress | None = None
    ) -> Plan[Path]:
        target.parent.mkdir(parents=True, exist_ok=True)
        part = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.part")
        path = f"/v1/jobs/{_seg(job_id)}/artifacts/{quote(name, safe='/')}"
        response = yield from self._core._request("GET", path, stream=True)
        try:
            try:
                total, report = (expected.bytes if expected else None), progress
                on_bytes = None if report is None else (lambda done: report(name, done, total))
                digest, size = yield Save(response, part, on_bytes)
            except httpx.TransportError as exc:
                raise errors.APIConnectionError(f"download of {name} broke off: {exc}") from exc
            listed = expected.sha256 if expected is not None else None
            for announced in (response.headers.get("x-content-sha256"), listed):
                if announced and announced.lower() != digest:
                    raise errors.ChecksumMismatch(name, announced.lower(), digest)
            if expected is not None and expected.bytes != size:
                raise errors.ChecksumMismatch(name, f"{expected.bytes} bytes", f"{size} bytes")
            os.replace(part, target)
        finally:
            part.unlink(missing_ok=True)
        return target

    def wait(
        self,
        job_id: str,
        *,
        timeout: float | None = None,
        poll_interval: float = 1.0,
        raise_on_failure: bool = False,
    ) -> Plan[Job]:
        """Poll until the job is terminal and return it; `WaitTimeout` after `timeout` seconds.

        With `raise_on_failure=True` a failed or cancelled job raises `JobFailed` instead.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            job = yield from self.get(job_id)
            if job.status.is_terminal:
                if raise_on_failure and job.status is not JobStatus.succeeded:
                    raise errors.JobFailed(job)
                return job
            delay = poll_interval
            if deadline is not None and timeout is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise errors.WaitTimeout(job, timeout)
                delay = min(delay, remaining)
            yield Sleep(delay)
