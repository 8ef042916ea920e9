"""An in-memory stand-in for the ftjobs HTTP API behind `httpx.MockTransport`: it fakes the network.

The client and the CLI under test are the real code; only the other end of the wire is scripted here,
so tests can make it fail on purpose (503 then 200, a wrong checksum, a job that ends mid-follow).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from typing import Any

import httpx

from ftjobs.client.client import AsyncClient, Client

BASE = "http://api.test"


def job_json(job_id: str = "ftjob-" + "a" * 20, status: str = "running", **extra: Any) -> dict[str, Any]:
    return {
        "id": job_id,
        "tenant": "default",
        "status": status,
        "created_at": 1_700_000_000,
        "model": "/models/minilm",
        "task": "classification",
        "method": {"type": "lora"},
        "training_file": "file-" + "b" * 20,
        "hyperparameters": {},
        **extra,
    }


def file_json(file_id: str = "file-" + "b" * 20, filename: str = "train.jsonl") -> dict[str, Any]:
    return {
        "id": file_id,
        "tenant": "default",
        "filename": filename,
        "bytes": 10,
        "rows": 2,
        "format": "text_label",
        "sha256": "0" * 64,
        "created_at": 1_700_000_000,
    }


def error_json(
    code: str, message: str, param: str | None = None, type: str = "invalid_request_error"
) -> dict:
    return {"error": {"code": code, "message": message, "param": param, "type": type}}


class FakeAPI:
    """Routes requests like the real API; `fail_next` queues error responses served before routing."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self.queued: list[httpx.Response | Exception] = []
        self.jobs: dict[str, dict[str, Any]] = {}
        self.events: dict[str, list[dict[str, Any]]] = {}
        self.metrics: dict[str, list[dict[str, Any]]] = {}
        self.artifacts: dict[str, dict[str, bytes]] = {}
        self.header_sha: dict[str, str] = {}  # artifact name -> sha256 the download header announces instead
        self.listing_sha: dict[str, str] = {}  # artifact name -> sha256 the artifact list announces instead
        self.routes: dict[str, Callable[[httpx.Request], httpx.Response]] = {}  # path -> custom answer
        self.on_job_poll: Callable[[FakeAPI, str], None] | None = None
        self.created: list[dict[str, Any]] = []

    def fail_next(self, status: int, body: Any = None, headers: dict[str, str] | None = None) -> None:
        content = json.dumps(body).encode() if body is not None else b""
        self.queued.append(httpx.Response(status, content=content, headers=headers))

    def raise_next(self, exc: Exception) -> None:
        self.queued.append(exc)

    def client(self, **kwargs: Any) -> Client:
        return Client(BASE, http_client=httpx.Client(transport=httpx.MockTransport(self)), **kwargs)

    def async_client(self, **kwargs: Any) -> AsyncClient:
        return AsyncClient(BASE, http_client=httpx.AsyncClient(transport=httpx.MockTransport(self)), **kwargs)

    def add_job(self, **fields: Any) -> dict[str, Any]:
        job = job_json(**fields)
        self.jobs[job["id"]] = job
        self.events.setdefault(job["id"], [])
        return job

    def add_event(self, job_id: str, message: str, **fields: Any) -> None:
        stream = self.events.setdefault(job_id, [])
        stream.append(
            {
                "id": f"1-{len(stream)}",
                "created_at": 1_700_000_000.0 + len(stream),
                "message": message,
                **fields,
            }
        )

    def add_artifact(self, job_id: str, name: str, content: bytes) -> None:
        self.artifacts.setdefault(job_id, {})[name] = content

    # ------------------------------------------------------------------ routing

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.queued:
            nxt = self.queued.pop(0)
            if isinstance(nxt, Exception):
                raise nxt
            return nxt
        path, method = request.url.path, request.method
        q = request.url.params
        if path in self.routes:
            return self.routes[path](request)
        if method == "GET" and path == "/v1/files":  # no earlier uploads (`?sha256=` finds none)
            return httpx.Response(200, json={"object": "list", "data": [], "has_more": False})
        if method == "POST" and path == "/v1/files":
            assert b'name="file"' in request.read()
            return httpx.Response(200, json=file_json())
        if method == "POST" and path == "/v1/jobs":
            body = json.loads(request.content)
            self.created.append(body)
            job = self.add_job(job_id=f"ftjob-{len(self.created):020d}", status="queued")
            return httpx.Response(201, json=job)
        if method == "GET" and path == "/v1/jobs":
            return httpx.Response(200, json={"data": list(self.jobs.values()), "has_more": False})
        m = re.fullmatch(r"/v1/jobs/([^/]+)(/.*)?", path)
        if not m:
            return httpx.Response(404, json=error_json("not_found", f"no route {path}"))
        job_id, rest = m.group(1), m.group(2) or ""
        if job_id not in self.jobs:
            return httpx.Response(404, json=error_json("job_not_found", f"no job {job_id}", "job_id"))
        job = self.jobs[job_id]
        if rest == "" and method == "GET":
            if self.on_job_poll:
                self.on_job_poll(self, job_id)
            return httpx.Response(200, json=job)
        if rest == "/cancel" and method == "POST":
            job["status"] = "cancelled"
            return httpx.Response(200, json=job)
        if rest in ("/events", "/metrics"):
            stream = (self.events if rest == "/events" else self.metrics).get(job_id, [])
            return httpx.Response(200, json=_page(stream, q.get("after"), int(q.get("limit", 100))))
        artifacts = self.artifacts.get(job_id, {})
        if rest == "/artifacts":
            data = [
                {"name": n, "bytes": len(c), "sha256": self.listing_sha.get(n, _sha(c)), "created_at": 1}
                for n, c in artifacts.items()
            ]
            return httpx.Response(200, json={"data": data})
        if rest.startswith("/artifacts/"):
            name = rest.removeprefix("/artifacts/")
            if name not in artifacts:
                return httpx.Response(
                    404, json=error_json("artifact_not_found", f"no artifact {name}", "name")
                )
            sha = self.header_sha.get(name, _sha(artifacts[name]))
            return httpx.Response(200, content=artifacts[name], headers={"X-Content-SHA256": sha})
        return httpx.Response(405, json=error_json("method_not_allowed", f"{method} {path}"))


def _sha(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def _page(items: list[dict[str, Any]], after: str | None, limit: int) -> dict[str, Any]:
    start = next((i + 1 for i, item in enumerate(items) if item["id"] == after), 0)
    data = items[start : start + limit]
    return {"data": data, "has_more": start + limit < len(items), "last_id": data[-1]["id"] if data else None}
