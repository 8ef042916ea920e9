"""`client.sweeps`: hyperparameter sweeps (`/v1/sweeps`), for both clients.

`client.sweeps.create(job, {"hyperparameters.learning_rate": FloatRange(low=1e-5, high=1e-2, log=True)},
n_trials=8, parallelism=2)` starts one; `client.sweeps.get(id).best` is the best completed trial (its params,
metric, job id and artifacts).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ftjobs.client.base import Plan
from ftjobs.client.models.jobs import JobCreate
from ftjobs.client.models.sweeps import Distribution, Sweep, SweepCreate, SweepList
from ftjobs.client.resources import Plans, _jsonable, _seg

SearchSpace = Mapping[str, Distribution | Mapping[str, Any]]


class SweepsPlans(Plans):
    def create(self, job: JobCreate | Mapping[str, Any], search_space: SearchSpace, **options: Any) -> Plan[Sweep]:
        """Start a sweep: `job` is the base request, `options` the other SweepCreate fields (n_trials, parallelism,
        metric, direction, sampler, pruner, seed)."""
        body = {
            "job": _jsonable(job),
            "search_space": {name: _jsonable(dist) for name, dist in search_space.items()},
            **{name: _jsonable(value) for name, value in options.items()},
        }
        SweepCreate.model_validate(body)  # a typo fails here, before the request
        return (yield from self._core._post("/v1/sweeps", Sweep, json=body))

    def list(self, *, after: str | None = None, limit: int = 20) -> Plan[SweepList]:
        """One page of sweeps, newest first."""
        return (yield from self._core._get("/v1/sweeps", SweepList, {"after": after, "limit": limit}))

    def get(self, sweep_id: str) -> Plan[Sweep]:
        """A sweep: every trial so far and the best one."""
        return (yield from self._core._get(f"/v1/sweeps/{_seg(sweep_id)}", Sweep))

    def cancel(self, sweep_id: str) -> Plan[Sweep]:
        """Cancel a sweep and every trial still queued or running."""
        return (yield from self._core._post(f"/v1/sweeps/{_seg(sweep_id)}/cancel", Sweep))


class Sweeps:
    """`client.sweeps`: create, list, get, cancel."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self._plans = SweepsPlans(client)

    def create(self, job: JobCreate | Mapping[str, Any], search_space: SearchSpace, **options: Any) -> Sweep:
        sweep: Sweep = self._client._run(self._plans.create(job, search_space, **options))
        return sweep

    def list(self, *, after: str | None = None, limit: int = 20) -> SweepList:
        page: SweepList = self._client._run(self._plans.list(after=after, limit=limit))
        return page

    def get(self, sweep_id: str) -> Sweep:
        sweep: Sweep = self._client._run(self._plans.get(sweep_id))
        return sweep

    def cancel(self, sweep_id: str) -> Sweep:
        sweep: Sweep = self._client._run(self._plans.cancel(sweep_id))
        return sweep


class AsyncSweeps:
    """`AsyncClient.sweeps`: as `Sweeps`, awaitable."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self._plans = SweepsPlans(client)

    async def create(self, job: JobCreate | Mapping[str, Any], search_space: SearchSpace, **options: Any) -> Sweep:
        sweep: Sweep = await self._client._run(self._plans.create(job, search_space, **options))
        return sweep

    async def list(self, *, after: str | None = None, limit: int = 20) -> SweepList:
        page: SweepList = await self._client._run(self._plans.list(after=after, limit=limit))
        return page

    async def get(self, sweep_id: str) -> Sweep:
        sweep: Sweep = await self._client._run(self._plans.get(sweep_id))
        return sweep

    async def cancel(self, sweep_id: str) -> Sweep:
        sweep: Sweep = await self._client._run(self._plans.cancel(sweep_id))
        return sweep
