"""The operator's view over the API (an `admin`-scope key): `Admin(client).queues()` / `.workers()`, and the
`ftjobs queue` / `ftjobs workers` commands that print them as tables.

    from ftjobs import Client
    from ftjobs.client.admin import Admin
    Admin(Client(api_key="ftj_admin...")).queues().queues[0].depth
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

from ftjobs.client.client import Client
from ftjobs.client.display import table
from ftjobs.client.models.admin import QueueOverview, WorkerOverview


class Admin:
    """`/v1/admin/*` for a sync `Client` whose key has the `admin` scope (else `PermissionDenied`)."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def queues(self) -> QueueOverview:
        """Each queue's depth, oldest waiting age, pending jobs per tenant and running attempts; jobs by status."""
        return self._client._run(self._client._get("/v1/admin/queues", QueueOverview))

    def workers(self) -> WorkerOverview:
        """Each worker's queues, state, current job and tenant, heartbeat age and hardware."""
        return self._client._run(self._client._get("/v1/admin/workers", WorkerOverview))


def add_parsers(command: Callable[..., argparse.ArgumentParser]) -> None:
    """The `queue` and `workers` commands, on the CLI's sub-parsers (`command` adds one)."""
    command("queue", "show the queues: depth, oldest waiting job, pending per tenant, running (admin key)")
    command("workers", "show the workers: state, current job and tenant, heartbeat age, hardware (admin key)")


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def queues_text(overview: QueueOverview) -> str:
    rows = [
        (q.name, q.depth, q.pending, _age(q.oldest_age_s), q.running, q.workers,
         ", ".join(f"{t.tenant}:{t.pending}+{t.admitted}" for t in q.tenants) or "-")
        for q in overview.queues
    ]  # fmt: skip
    text = table(["QUEUE", "DEPTH", "PENDING", "OLDEST", "RUNNING", "WORKERS", "TENANTS (pending+admitted)"], rows)
    if overview.jobs:
        counts = [(t.tenant, ", ".join(f"{s}={n}" for s, n in t.counts.items())) for t in overview.jobs]
        text += "\n\n" + table(["TENANT", "JOBS BY STATUS"], counts)
    return text


def workers_text(overview: WorkerOverview) -> str:
    if not overview.workers:
        return "no workers are registered in Redis"
    rows = []
    for w in overview.workers:
        hw = w.hardware
        if hw is None:
            hardware = "(probing)"
        elif hw.gpu_name:
            memory = f" {hw.gpu_memory_bytes / 2**30:.0f}GiB" if hw.gpu_memory_bytes else ""
            hardware = f"{hw.device} {hw.gpu_count}x {hw.gpu_name}{memory}, {hw.cpu_count} cpu"
        else:
            hardware = f"{hw.device}, {hw.cpu_count} cpu"
        job = f"{w.current_job} #{w.current_attempt}" if w.current_job else (w.current_rq_job or "-")
        rows.append((w.name, w.state, ",".join(w.queues), job, w.current_tenant or "-",
                     _age(w.last_heartbeat_age_s), hardware))  # fmt: skip
    return table(["WORKER", "STATE", "QUEUES", "JOB", "TENANT", "HEARTBEAT", "HARDWARE"], rows)


def _print(args: argparse.Namespace, value: Any, text: Callable[[Any], str]) -> int:
    print(json.dumps(value.model_dump(mode="json"), indent=2) if getattr(args, "json", False) else text(value))
    return 0


def cmd_queue(args: argparse.Namespace, api: Client) -> int:
    return _print(args, Admin(api).queues(), queues_text)


def cmd_workers(args: argparse.Namespace, api: Client) -> int:
    return _print(args, Admin(api).workers(), workers_text)
