"""The ftjobs Python client: `Client` (sync) and `AsyncClient`, with resources that mirror the API.

    from ftjobs.client import Client

    with Client("http://127.0.0.1:8000") as ftjobs:
        train = ftjobs.files.upload("train.jsonl")
        job = ftjobs.jobs.create(model="all-MiniLM-L6-v2", training_file=train.id, task="classification")
        for event in ftjobs.jobs.follow(job.id):
            print(event.message)
        ftjobs.jobs.download_all(job.id, "adapter", prefix="adapter/")  # adapter/adapter_model.safetensors ...

Each resource method is generated from one plan in client/resources.py (`_sync` / `_async` keep its
signature for type checkers); the two clients differ only in `_execute`, which performs one plan
step with httpx.Client or httpx.AsyncClient. Retries and errors: see client/base.py and client/errors.py.
"""

from __future__ import annotations

import asyncio
import builtins
import time
from collections.abc import AsyncIterator, Iterator
from types import TracebackType
from typing import Any, ParamSpec, Self, TypeVar

import httpx

from ftjobs.client.annotations import Annotations, AsyncAnnotations
from ftjobs.client.base import (
    DEFAULT_BASE_URL,
    BaseClient,
    Digest,
    Emit,
    NextLine,
    Plan,
    Read,
    Save,
    Send,
    Sleep,
    Step,
    Stream,
)
from ftjobs.client.exports import AsyncExports, Exports
from ftjobs.client.methods import (
    _async,
    _async_iter,
    _async_list,
    _AsyncResource,
    _sync,
    _sync_iter,
    _sync_list,
    _SyncResource,
)
from ftjobs.client.models import Health
from ftjobs.client.monitors import AsyncEvaluations, AsyncMonitors, Evaluations, Monitors
from ftjobs.client.resources import FilesPlans, JobsPlans, ModelsPlans, ServicePlans
from ftjobs.client.sweeps import AsyncSweeps, Sweeps
from ftjobs.client.webhooks import AsyncWebhooks, Webhooks

__all__ = ["Client", "AsyncClient", "DEFAULT_BASE_URL"]

T = TypeVar("T")
P = ParamSpec("P")

# --------------------------------------------------------------------------- resources


class Files(_SyncResource):
    """`client.files`: upload and look up training/validation datasets."""

    _plans_class = FilesPlans
    upload = _sync(FilesPlans.upload)
    get = _sync(FilesPlans.get)
    list = _sync(FilesPlans.list)
    find = _sync(FilesPlans.find)
    profile = _sync(FilesPlans.profile)


class Models(_SyncResource):
    """`client.models`: the base models a job may start from."""

    _plans_class = ModelsPlans
    list = _sync(ModelsPlans.list)


class Jobs(_SyncResource):
    """`client.jobs`: submit, inspect, follow, pause, resume, cancel fine-tuning jobs and fetch what they produce."""

    _plans_class = JobsPlans
    create = _sync(JobsPlans.create)
    get = _sync(JobsPlans.get)
    list = _sync(JobsPlans.list)
    cancel = _sync(JobsPlans.cancel)
    pause = _sync(JobsPlans.pause)
    resume = _sync(JobsPlans.resume)
    events = _sync(JobsPlans.events)
    follow = _sync_iter(JobsPlans.follow)
    stream_events = _sync_iter(JobsPlans.stream_events)
    all_events = _sync_list(JobsPlans.all_events)
    metrics = _sync(JobsPlans.metrics)
    all_metrics = _sync_list(JobsPlans.all_metrics)
    artifacts = _sync(JobsPlans.artifacts)
    samples = _sync(JobsPlans.samples)
    download = _sync(JobsPlans.download)
    download_all = _sync(JobsPlans.download_all)
    wait = _sync(JobsPlans.wait)


class AsyncFiles(_AsyncResource):
    """`AsyncClient.files`: as `Files`, awaitable."""

    _plans_class = FilesPlans
    upload = _async(FilesPlans.upload)
    get = _async(FilesPlans.get)
    list = _async(FilesPlans.list)
    find = _async(FilesPlans.find)
    profile = _async(FilesPlans.profile)


class AsyncModels(_AsyncResource):
    """`AsyncClient.models`: as `Models`, awaitable."""

    _plans_class = ModelsPlans
    list = _async(ModelsPlans.list)


class AsyncJobs(_AsyncResource):
    """`AsyncClient.jobs`: as `Jobs`, awaitable (`follow` is an async iterator)."""

    _plans_class = JobsPlans
    create = _async(JobsPlans.create)
    get = _async(JobsPlans.get)
    list = _async(JobsPlans.list)
    cancel = _async(JobsPlans.cancel)
    pause = _async(JobsPlans.pause)
    resume = _async(JobsPlans.resume)
    events = _async(JobsPlans.events)
    follow = _async_iter(JobsPlans.follow)
    stream_events = _async_iter(JobsPlans.stream_events)
    all_events = _async_list(JobsPlans.all_events)
    metrics = _async(JobsPlans.metrics)
    all_metrics = _async_list(JobsPlans.all_metrics)
    artifacts = _async(JobsPlans.artifacts)
    samples = _async(JobsPlans.samples)
    download = _async(JobsPlans.download)
    download_all = _async(JobsPlans.download_all)
    wait = _async(JobsPlans.wait)


# --------------------------------------------------------------------------- the two clients


class Client(BaseClient):
    """Synchronous ftjobs client.

    `base_url` defaults to `$FTJOBS_URL`, then http://127.0.0.1:8000; `api_key` to `$FTJOBS_API_KEY`
    (sent as `Authorization: Bearer`). Pass `http_client=` to bring your own `httpx.Client` (proxies,
    TLS, a starlette `TestClient`); the client then sends paths relative to its base_url unless
    `base_url` is given too, and leaves closing it to you.
    """

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        http_client: httpx.Client | None = None,
        timeout: float = 60.0,
        max_retries: int = 2,
    ) -> None:
        super().__init__(base_url, api_key, timeout, max_retries, http_client is not None)
        self._owns_http = http_client is None
        self._http = http_client if http_client is not None else httpx.Client(timeout=timeout)
        self._service = ServicePlans(self)
        self.files, self.jobs, self.sweeps = Files(self), Jobs(self), Sweeps(self)
        self.models, self.webhooks, self.exports = Models(self), Webhooks(self), Exports(self)
        self.evaluations, self.monitors, self.annotations = Evaluations(self), Monitors(self), Annotations(self)

    def health(self) -> Health:
        """`GET /healthz`: the API process is up."""
        return self._run(self._service.health())

    def ready(self) -> Health:
        """`GET /readyz`: the API can reach Redis (raises `ServiceUnavailable` when it cannot)."""
        return self._run(self._service.ready())

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()

    # The executor: the only sync-specific code.
    def _execute(self, step: Step) -> Any:
        if isinstance(step, Send):
            request = self._http.build_request(
                step.method,
                step.url,
                params=step.params,
                json=step.json,
                files=step.files,
                data=step.data,
                headers=step.headers,
            )
            return self._http.send(request, stream=step.stream)
        if isinstance(step, NextLine):
            return step.stream.next_line()
        if isinstance(step, Sleep):
            time.sleep(step.seconds)
        elif isinstance(step, Read):
            step.response.read()
            step.response.close()
        elif isinstance(step, Save):
            try:
                with open(step.path, "wb") as fh:
                    sink = Digest(fh, step.on_bytes)
                    for chunk in step.response.iter_bytes():
                        sink.write(chunk)
                return sink.result()
            finally:
                step.response.close()
        return None

    def _iterate(self, plan: Stream[T] | Plan[Any], result: builtins.list[Any] | None = None) -> Iterator[T]:
        value: Any = None
        error: Exception | None = None
        try:
            while True:
                try:
                    step = plan.throw(error) if error is not None else plan.send(value)
                except StopIteration as stop:
                    if result is not None:
                        result.append(stop.value)
                    return
                value, error = None, None
                if isinstance(step, Emit):
                    yield from step.items
                    continue
                try:
                    value = self._execute(step)
                except Exception as exc:  # handed to the plan, which maps or cleans up and re-raises
                    error = exc
        finally:
            plan.close()

    def _run(self, plan: Plan[T]) -> T:
        result: builtins.list[T] = []
        for _ in self._iterate(plan, result):
            pass
        return result[0]


class AsyncClient(BaseClient):
    """Asynchronous ftjobs client: the same resources as `Client`, awaitable, over `httpx.AsyncClient`."""

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        http_client: httpx.AsyncClient | None = None,
        timeout: float = 60.0,
        max_retries: int = 2,
    ) -> None:
        super().__init__(base_url, api_key, timeout, max_retries, http_client is not None)
        self._owns_http = http_client is None
        self._http = http_client if http_client is not None else httpx.AsyncClient(timeout=timeout)
        self._service = ServicePlans(self)
        self.files, self.jobs, self.sweeps = AsyncFiles(self), AsyncJobs(self), AsyncSweeps(self)
        self.models, self.webhooks, self.exports = AsyncModels(self), AsyncWebhooks(self), AsyncExports(self)
        self.evaluations, self.monitors = AsyncEvaluations(self), AsyncMonitors(self)
        self.annotations = AsyncAnnotations(self)

    async def health(self) -> Health:
        """`GET /healthz`: the API process is up."""
        return await self._run(self._service.health())

    async def ready(self) -> Health:
        """`GET /readyz`: the API can reach Redis (raises `ServiceUnavailable` when it cannot)."""
        return await self._run(self._service.ready())

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        await self.aclose()

    # The executor: the only async-specific code (file writes stay blocking; they are local and chunked).
    async def _execute(self, step: Step) -> Any:
        if isinstance(step, Send):
            request = self._http.build_request(
                step.method,
                step.url,
                params=step.params,
                json=step.json,
                files=step.files,
                data=step.data,
                headers=step.headers,
            )
            return await self._http.send(request, stream=step.stream)
        if isinstance(step, NextLine):
            return await step.stream.anext_line()
        if isinstance(step, Sleep):
            await asyncio.sleep(step.seconds)
        elif isinstance(step, Read):
            await step.response.aread()
            await step.response.aclose()
        elif isinstance(step, Save):
            try:
                with open(step.path, "wb") as fh:
                    sink = Digest(fh, step.on_bytes)
                    async for chunk in step.response.aiter_bytes():
                        sink.write(chunk)
                return sink.result()
            finally:
                await step.response.aclose()
        return None

    async def _iterate(self, plan: Stream[T] | Plan[Any], result: builtins.list[Any] | None = None) -> AsyncIterator[T]:
        value: Any = None
        error: Exception | None = None
        try:
            while True:
                try:
                    step = plan.throw(error) if error is not None else plan.send(value)
                except StopIteration as stop:
                    if result is not None:
                        result.append(stop.value)
                    return
                value, error = None, None
                if isinstance(step, Emit):
                    for item in step.items:
                        yield item
                    continue
                try:
                    value = await self._execute(step)
                except Exception as exc:  # handed to the plan, which maps or cleans up and re-raises
                    error = exc
        finally:
            plan.close()

    async def _run(self, plan: Plan[T]) -> T:
        result: builtins.list[T] = []
        async for _ in self._iterate(plan, result):
            pass
        return result[0]
