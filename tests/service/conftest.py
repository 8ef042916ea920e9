"""Helpers for the API tests: upload JSONL rows and create jobs through the real app (`http` fixture)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from types import EllipsisType
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from ftjobs.core import keys
from ftjobs.core.records import guarded_write_args
from ftjobs.core.settings import Settings
from ftjobs.service.main import create_app

ROWS: dict[str, list[dict[str, Any]]] = {
    "messages": [
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
        {
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": "2+2?"},
                {"role": "assistant", "content": "4"},
            ]
        },
    ],
    "prompt_completion": [
        {"prompt": "say red :", "completion": " red"},
        {"prompt": "say blue :", "completion": " blue"},
    ],
    "text": [{"text": "the cat sat"}, {"text": "on the mat"}, {"text": "and slept"}],
    "text_label": [{"text": "win a prize now", "label": "spam"}, {"text": "see you at 5", "label": "ham"}],
    "source_target": [{"source": "hello", "target": "bonjour"}, {"source": "cat", "target": "chat"}],
}


def jsonl(rows: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def upload(http: httpx.Client, content: bytes, filename: str = "train.jsonl", **kw: Any) -> httpx.Response:
    return http.post("/v1/files", files={"file": (filename, content, "application/jsonl")}, **kw)


def assert_error(
    response: httpx.Response, status: int, code: str, param: str | None | EllipsisType = ...
) -> dict[str, Any]:
    """The one error body: exactly code/message/param/type, no traceback."""
    assert response.status_code == status, response.text
    error = response.json()["error"]
    required = {"code", "message", "param", "type"}
    # invalid_file adds details + total; every error answered during a request carries its request_id
    assert required <= set(error) <= required | {"details", "total", "request_id"}
    assert error["code"] == code, error
    if param is not ...:
        assert error["param"] == param, error
    assert "Traceback" not in response.text
    return dict(error)


@pytest.fixture
def make_client(settings: Settings) -> Iterator[Callable[..., TestClient]]:
    """Another app + TestClient over the same Redis, with some settings changed."""
    opened: list[TestClient] = []

    def make(**changes: Any) -> TestClient:
        tc = TestClient(create_app(settings.model_copy(update=changes)), raise_server_exceptions=False)
        tc.__enter__()
        opened.append(tc)
        return tc

    yield make
    for tc in opened:
        tc.__exit__(None, None, None)


@pytest.fixture
def training_file(http: httpx.Client) -> str:
    response = upload(http, jsonl(ROWS["prompt_completion"] * 4))
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


@pytest.fixture
def model_path(model_root: Path) -> str:
    return str(model_root / "tiny-model")  # need not exist: the worker checks existence


@pytest.fixture
def create_job(http: httpx.Client, training_file: str, model_path: str) -> Callable[..., httpx.Response]:
    def create(**body: Any) -> httpx.Response:
        headers = body.pop("headers", None)
        return http.post(
            "/v1/jobs", json={"model": model_path, "training_file": training_file, **body}, headers=headers
        )

    return create


def worker_write(
    redis, job: dict, statuses: str, fields: dict, entry: dict | None = None, stream: str = "events"
):  # type: ignore[no-untyped-def]
    """Write the job hash exactly as jobs/report.py does: GUARDED_WRITE, JSON values."""
    script = redis.register_script(keys.GUARDED_WRITE)
    tenant, job_id = job["tenant"], job["id"]
    stream_key = keys.events_key(tenant, job_id) if stream == "events" else keys.metrics_key(tenant, job_id)
    args = guarded_write_args(job["attempt"], [statuses], fields, json.dumps(entry) if entry else "")
    return script(keys=keys.guarded_write_keys(tenant, job_id, stream_key), args=args)
