"""`client.evaluations` and `client.monitors`: evaluation jobs (`/v1/evaluations`) and monitors (`/v1/monitors`).

    job = ftjobs.evaluations.create(file=new.id, job_id=trained.id)   # a Job with evaluate_only: wait, read results
    mon = ftjobs.monitors.create(trained.id, dataset="traffic.jsonl", schedule="0 * * * *", retrain=True)
    ftjobs.monitors.run(mon.id)                                        # now, besides the schedule
    runs = ftjobs.monitors.runs(mon.id).data                           # each with its metric and decision

`AsyncClient` has the same resources, each method awaitable.
"""

from __future__ import annotations

from typing import Any

from ftjobs.client.base import Plan
from ftjobs.client.models import Hyperparameters, Job
from ftjobs.client.models.monitors import Monitor, MonitorDeleted, MonitorList, MonitorRun, MonitorRunList
from ftjobs.client.resources import Plans, _jsonable, _seg


class EvaluationsPlans(Plans):
    def create(
        self,
        *,
        file: str,
        job_id: str | None = None,
        checkpoint_step: int | None = None,
        model: str | None = None,
        task: str | None = None,
        idempotency_key: str | None = None,
        **options: Any,
    ) -> Plan[Job]:
        """Evaluate a job's weights (or a checkpoint, or a base model) on a file; options: group_field,
        eval_samples, eval_generation_limit, eval_generation, metadata."""
        given = {"job_id": job_id, "checkpoint_step": checkpoint_step, "model": model, "task": task, **options}
        body = {"file": file, **{k: _jsonable(v) for k, v in given.items() if v is not None}}
        return (yield from self._core._post("/v1/evaluations", Job, json=body, idempotency_key=idempotency_key))


class MonitorsPlans(Plans):
    def create(
        self,
        job_id: str,
        *,
        dataset: str,
        schedule: str,
        metric: str | None = None,
        threshold: float | None = None,
        retrain: bool = False,
        retrain_hyperparameters: Hyperparameters | dict[str, Any] | None = None,
        metadata: dict[str, str] | None = None,
    ) -> Plan[Monitor]:
        """Watch a succeeded job on the newest file named `dataset`, on a cron `schedule`."""
        given = {"metric": metric, "threshold": threshold, "retrain_hyperparameters": retrain_hyperparameters,
                 "metadata": metadata}  # fmt: skip
        body = {"job_id": job_id, "dataset": dataset, "schedule": schedule, "retrain": retrain}
        body.update({k: _jsonable(v) for k, v in given.items() if v is not None})
        return (yield from self._core._post("/v1/monitors", Monitor, json=body))

    def list(self, *, after: str | None = None, limit: int = 20) -> Plan[MonitorList]:
        return (yield from self._core._get("/v1/monitors", MonitorList, {"after": after, "limit": limit}))

    def get(self, monitor_id: str) -> Plan[Monitor]:
        return (yield from self._core._get(f"/v1/monitors/{_seg(monitor_id)}", Monitor))

    def delete(self, monitor_id: str) -> Plan[MonitorDeleted]:
        response = yield from self._core._request("DELETE", f"/v1/monitors/{_seg(monitor_id)}")
        return self._core._parse(response, MonitorDeleted)

    def run(self, monitor_id: str) -> Plan[MonitorRun]:
        """Run the monitor now: the run, `evaluating` with its evaluation job's id."""
        return (yield from self._core._post(f"/v1/monitors/{_seg(monitor_id)}/run", MonitorRun))

    def runs(self, monitor_id: str, *, after: str | None = None, limit: int = 20) -> Plan[MonitorRunList]:
        """The monitor's runs, newest first, with their metric and decision."""
        path = f"/v1/monitors/{_seg(monitor_id)}/runs"
        return (yield from self._core._get(path, MonitorRunList, {"after": after, "limit": limit}))


class Evaluations:
    """`client.evaluations.create(file=..., job_id=...)`: an evaluation job, a `Job` with `evaluate_only`."""

    def __init__(self, client: Any) -> None:
        self._client, self._plans = client, EvaluationsPlans(client)

    def create(self, *, file: str, job_id: str | None = None, checkpoint_step: int | None = None,
               model: str | None = None, task: str | None = None, **options: Any) -> Job:  # fmt: skip
        """Evaluate a job's weights (or a checkpoint, or a base model) on a file, without training."""
        job: Job = self._client._run(self._plans.create(file=file, job_id=job_id, checkpoint_step=checkpoint_step,
                                                         model=model, task=task, **options))  # fmt: skip
        return job


class AsyncEvaluations(Evaluations):
    """`AsyncClient.evaluations`: as `Evaluations`, awaitable."""

    async def create(self, *, file: str, job_id: str | None = None, checkpoint_step: int | None = None,  # type: ignore[override]
                     model: str | None = None, task: str | None = None, **options: Any) -> Job:  # fmt: skip
        plan = self._plans.create(file=file, job_id=job_id, checkpoint_step=checkpoint_step, model=model, task=task,
                                  **options)  # fmt: skip
        job: Job = await self._client._run(plan)
        return job


class Monitors:
    """`client.monitors`: create, list, get, delete, run now, and a monitor's runs."""

    def __init__(self, client: Any) -> None:
        self._client, self._plans = client, MonitorsPlans(client)

    def create(self, job_id: str, *, dataset: str, schedule: str, **options: Any) -> Monitor:
        """Watch a succeeded job; options: metric, threshold, retrain, retrain_hyperparameters, metadata."""
        monitor: Monitor = self._client._run(self._plans.create(job_id, dataset=dataset, schedule=schedule, **options))
        return monitor

    def list(self, *, after: str | None = None, limit: int = 20) -> MonitorList:
        page: MonitorList = self._client._run(self._plans.list(after=after, limit=limit))
        return page

    def get(self, monitor_id: str) -> Monitor:
        monitor: Monitor = self._client._run(self._plans.get(monitor_id))
        return monitor

    def delete(self, monitor_id: str) -> MonitorDeleted:
        deleted: MonitorDeleted = self._client._run(self._plans.delete(monitor_id))
        return deleted

    def run(self, monitor_id: str) -> MonitorRun:
        """Run the monitor now: the run, `evaluating` with its evaluation job's id."""
        run: MonitorRun = self._client._run(self._plans.run(monitor_id))
        return run

    def runs(self, monitor_id: str, *, after: str | None = None, limit: int = 20) -> MonitorRunList:
        """The monitor's runs, newest first, with their metric and decision."""
        page: MonitorRunList = self._client._run(self._plans.runs(monitor_id, after=after, limit=limit))
        return page


class AsyncMonitors(Monitors):
    """`AsyncClient.monitors`: as `Monitors`, awaitable."""

    async def create(self, job_id: str, *, dataset: str, schedule: str, **options: Any) -> Monitor:  # type: ignore[override]
        return await self._client._run(self._plans.create(job_id, dataset=dataset, schedule=schedule, **options))  # type: ignore[no-any-return]

    async def list(self, *, after: str | None = None, limit: int = 20) -> MonitorList:  # type: ignore[override]
        return await self._client._run(self._plans.list(after=after, limit=limit))  # type: ignore[no-any-return]

    async def get(self, monitor_id: str) -> Monitor:  # type: ignore[override]
        return await self._client._run(self._plans.get(monitor_id))  # type: ignore[no-any-return]

    async def delete(self, monitor_id: str) -> MonitorDeleted:  # type: ignore[override]
        return await self._client._run(self._plans.delete(monitor_id))  # type: ignore[no-any-return]

    async def run(self, monitor_id: str) -> MonitorRun:  # type: ignore[override]
        return await self._client._run(self._plans.run(monitor_id))  # type: ignore[no-any-return]

    async def runs(self, monitor_id: str, *, after: str | None = None, limit: int = 20) -> MonitorRunList:  # type: ignore[override]
        return await self._client._run(self._plans.runs(monitor_id, after=after, limit=limit))  # type: ignore[no-any-return]
