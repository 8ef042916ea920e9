"""Method generators for the client's resources: each turns one plan of client/resources.py into a sync or async
method with the plan's own signature (for type checkers); `_SyncResource` / `_AsyncResource` hold the client and
its plans."""

from __future__ import annotations

import builtins
import functools
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from typing import Any, Concatenate, ParamSpec, TypeVar

from ftjobs.client.base import Plan, Stream
from ftjobs.client.resources import Plans

T = TypeVar("T")
P = ParamSpec("P")


class _SyncResource:
    _plans_class: type[Plans]

    def __init__(self, client: Any) -> None:  # a Client (client/client.py imports this module)
        self._client = client
        self._plans: Any = self._plans_class(client)


class _AsyncResource:
    _plans_class: type[Plans]

    def __init__(self, client: Any) -> None:  # an AsyncClient
        self._client = client
        self._plans: Any = self._plans_class(client)


def _sync(plan: Callable[Concatenate[Any, P], Plan[T]]) -> Callable[Concatenate[_SyncResource, P], T]:
    def method(self: _SyncResource, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return self._client._run(plan(self._plans, *args, **kwargs))

    functools.update_wrapper(method, plan)
    return method


def _sync_iter(
    plan: Callable[Concatenate[Any, P], Stream[T]],
) -> Callable[Concatenate[_SyncResource, P], Iterator[T]]:
    def method(self: _SyncResource, /, *args: P.args, **kwargs: P.kwargs) -> Iterator[T]:
        return self._client._iterate(plan(self._plans, *args, **kwargs))

    functools.update_wrapper(method, plan)
    return method


def _sync_list(
    plan: Callable[Concatenate[Any, P], Stream[T]],
) -> Callable[Concatenate[_SyncResource, P], builtins.list[T]]:
    def method(self: _SyncResource, /, *args: P.args, **kwargs: P.kwargs) -> builtins.list[T]:
        return builtins.list(self._client._iterate(plan(self._plans, *args, **kwargs)))

    functools.update_wrapper(method, plan)
    return method


def _async(
    plan: Callable[Concatenate[Any, P], Plan[T]],
) -> Callable[Concatenate[_AsyncResource, P], Coroutine[Any, Any, T]]:
    async def method(self: _AsyncResource, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return await self._client._run(plan(self._plans, *args, **kwargs))

    functools.update_wrapper(method, plan)
    return method


def _async_iter(
    plan: Callable[Concatenate[Any, P], Stream[T]],
) -> Callable[Concatenate[_AsyncResource, P], AsyncIterator[T]]:
    def method(self: _AsyncResource, /, *args: P.args, **kwargs: P.kwargs) -> AsyncIterator[T]:
        return self._client._iterate(plan(self._plans, *args, **kwargs))

    functools.update_wrapper(method, plan)
    return method


def _async_list(
    plan: Callable[Concatenate[Any, P], Stream[T]],
) -> Callable[Concatenate[_AsyncResource, P], Coroutine[Any, Any, builtins.list[T]]]:
    async def method(self: _AsyncResource, /, *args: P.args, **kwargs: P.kwargs) -> builtins.list[T]:
        return [item async for item in self._client._iterate(plan(self._plans, *args, **kwargs))]

    functools.update_wrapper(method, plan)
    return method
