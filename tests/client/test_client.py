"""The client's happy paths over a faked network: URLs, auth, pagination, downloads, the async twin."""

from __future__ import annotations

import asyncio
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from ftjobs.client import AsyncClient, Client, errors
from ftjobs.client.models import Hyperparameters, JobCreate, LoraMethod
from tests.client.fake_api import FakeAPI, job_json

JOB = job_json()["id"]
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def api() -> FakeAPI:
    fake = FakeAPI()
    fake.add_job()
    return fake


def test_a_given_http_client_keeps_its_base_url(api: FakeAPI, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FTJOBS_API_KEY", "sk-test")
    http = httpx.Client(base_url="http://testserver", transport=httpx.MockTransport(api))
    Client(http_client=http).jobs.get(JOB)
    request = api.requests[-1]
    assert str(request.url) == f"http://testserver/v1/jobs/{JOB}"
    assert request.headers["Authorization"] == "Bearer sk-test"
    with pytest.raises(errors.NotFound):  # the fake API has no /prefix: only the URL matters here
        Client("http://other:9000/prefix", api_key="k2", http_client=http).jobs.get(JOB)
    assert str(api.requests[-1].url) == f"http://other:9000/prefix/v1/jobs/{JOB}"
    assert api.requests[-1].headers["Authorization"] == "Bearer k2"


def test_base_url_defaults_to_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FTJOBS_URL", "http://ftjobs.internal:8080/")
    monkeypatch.delenv("FTJOBS_API_KEY", raising=False)
    with Client() as ftjobs:
        assert ftjobs.base_url == "http://ftjobs.internal:8080" and ftjobs.api_key is None
    monkeypatch.delenv("FTJOBS_URL")
    with Client() as ftjobs:
        assert ftjobs.base_url == "http://127.0.0.1:8000"


def test_ids_cannot_add_path_segments(api: FakeAPI) -> None:
    with pytest.raises(errors.NotFound):
        api.client().jobs.get("../files")
    assert api.requests[-1].url.raw_path == b"/v1/jobs/..%2Ffiles"


def test_create_sends_keywords_or_a_jobcreate(api: FakeAPI) -> None:
    ftjobs = api.client()
    ftjobs.jobs.create(
        model="/models/minilm",
        training_file="file-" + "b" * 20,
        task="classification",
        method=LoraMethod(r=4),
        hyperparameters={"n_epochs": 2},
        metadata={"team": "nlp"},
    )
    body = api.created[-1]
    assert body["task"] == "classification" and body["hyperparameters"] == {"n_epochs": 2}
    assert body["method"]["type"] == "lora" and body["method"]["r"] == 4
    assert "suffix" not in body and "validation_file" not in body
    request = JobCreate(
        model="/models/minilm",
        training_file="file-" + "b" * 20,
        hyperparameters=Hyperparameters(batch_size=4),
    )
    ftjobs.jobs.create(request)
    # Only the fields given: the server fills the same defaults, and a child job inherits what it leaves out.
    sent = {"model": "/models/minilm", "training_file": "file-" + "b" * 20, "hyperparameters": {"batch_size": 4}}
    assert api.created[-1] == sent
    assert JobCreate.model_validate(sent) == request
    child = JobCreate(
        model="/models/minilm",
        training_file="file-" + "b" * 20,
        parent_job_id="ftjob-" + "c" * 20,
        method=LoraMethod(dropout=0.2),
    )
    ftjobs.jobs.create(child)
    assert api.created[-1]["method"] == {"type": "lora", "dropout": 0.2}  # r, alpha ...: the parent's
    with pytest.raises(TypeError):
        ftjobs.jobs.create(request, model="other")
    with pytest.raises(TypeError):
        ftjobs.jobs.create(model="only-a-model")


def test_lists_and_pages(api: FakeAPI) -> None:
    for i in range(2500):
        api.metrics.setdefault(JOB, []).append(
            {"id": f"1-{i}", "step": i, "split": "train", "created_at": 1.0, "values": {"loss": 1 / (i + 1)}}
        )
    ftjobs = api.client()
    page = ftjobs.jobs.metrics(JOB, limit=10)
    assert len(page.data) == 10 and page.has_more
    points = ftjobs.jobs.all_metrics(JOB)
    assert [p.step for p in points] == list(range(2500))
    assert ftjobs.jobs.list(status="running").data[0].id == JOB
    assert api.requests[-1].url.params["status"] == "running"
    assert "after" not in api.requests[-1].url.params


def test_all_events_and_all_metrics_page_through_without_waiting(api: FakeAPI) -> None:
    for i in range(1500):
        api.add_event(JOB, f"event {i}")
        api.metrics.setdefault(JOB, []).append(
            {"id": f"1-{i}", "step": i, "split": "train", "created_at": 1.0, "values": {"loss": 1.0}}
        )
    ftjobs = api.client()
    events = ftjobs.jobs.all_events(JOB)  # the job is still running: all written so far, then return
    assert [e.message for e in events] == [f"event {i}" for i in range(1500)]
    assert [r.url.path for r in api.requests] == [f"/v1/jobs/{JOB}/events"] * 2  # two pages of 1000, no poll
    assert [e.message for e in ftjobs.jobs.all_events(JOB, after=events[1497].id)] == ["event 1498", "event 1499"]

    async def scenario() -> tuple[list[str], list[int]]:
        async with api.async_client() as client:
            messages = [e.message for e in await client.jobs.all_events(JOB)]
            steps = [p.step for p in await client.jobs.all_metrics(JOB)]
            return messages, steps

    assert asyncio.run(scenario()) == ([e.message for e in events], list(range(1500)))


def test_download_and_download_all(api: FakeAPI, tmp_path: Path) -> None:
    files = {
        "adapter/adapter_config.json": b'{"r": 8}',
        "adapter/adapter_model.safetensors": bytes(range(256)) * 4096,
        "metrics.json": b"{}",
    }
    for name, content in files.items():
        api.add_artifact(JOB, name, content)
    ftjobs = api.client()
    assert [a.name for a in ftjobs.jobs.artifacts(JOB)] == list(files)
    one = ftjobs.jobs.download(JOB, "metrics.json", tmp_path)  # into an existing folder
    assert one == tmp_path / "metrics.json" and one.read_bytes() == b"{}"
    adapter = ftjobs.jobs.download_all(JOB, tmp_path / "adapter-out", prefix="adapter/")
    assert sorted(p.name for p in adapter) == ["adapter_config.json", "adapter_model.safetensors"]
    weights = (tmp_path / "adapter-out" / "adapter_model.safetensors").read_bytes()  # the prefix left out
    assert hashlib.sha256(weights).hexdigest() == hashlib.sha256(files["adapter/adapter_model.safetensors"]).hexdigest()
    everything = ftjobs.jobs.download_all(JOB, tmp_path / "all")
    assert (tmp_path / "all" / "adapter" / "adapter_config.json") in everything
    assert not list(tmp_path.rglob("*.part"))


def test_health_and_ready(api: FakeAPI) -> None:
    api.routes["/healthz"] = lambda r: httpx.Response(200, json={"status": "ok", "version": "0.1.0"})
    api.routes["/readyz"] = lambda r: httpx.Response(
        503,
        json={"error": {"code": "redis_unavailable", "message": "no redis", "type": "service_unavailable"}},
        headers={"Retry-After": "0"},
    )
    ftjobs = api.client()
    assert ftjobs.health().status == "ok"
    with pytest.raises(errors.ServiceUnavailable):
        ftjobs.ready()
    assert len(api.requests) == 1 + 3  # the 503 was retried twice


def test_async_client_mirrors_the_sync_one(api: FakeAPI, tmp_path: Path) -> None:
    api.add_event(JOB, "running")
    api.add_artifact(JOB, "adapter/adapter_config.json", b"{}")

    def finish(fake: FakeAPI, job_id: str) -> None:
        fake.add_event(job_id, "succeeded")
        fake.jobs[job_id]["status"] = "succeeded"

    api.on_job_poll = finish

    async def scenario() -> None:
        api.fail_next(503, None, headers={"Retry-After": "0"})
        async with api.async_client() as ftjobs:
            created = await ftjobs.jobs.create(model="m", training_file="file-" + "b" * 20)
            assert created.status == "queued"
            keys = {r.headers["Idempotency-Key"] for r in api.requests}
            assert len(keys) == 1 and len(api.requests) == 2
            messages = [e.message async for e in ftjobs.jobs.follow(JOB, poll_interval=0)]
            assert messages == ["running", "succeeded"]
            paths = await ftjobs.jobs.download_all(JOB, tmp_path, prefix="adapter/")
            assert paths == [tmp_path / "adapter_config.json"]
            with pytest.raises(errors.NotFound):
                await ftjobs.jobs.get("ftjob-" + "0" * 20)
            api.header_sha["adapter/adapter_config.json"] = "0" * 64
            with pytest.raises(errors.ChecksumMismatch):
                await ftjobs.jobs.download(JOB, "adapter/adapter_config.json", tmp_path / "x.json")
            assert not (tmp_path / "x.json").exists()

    asyncio.run(scenario())
    assert isinstance(AsyncClient("http://x").jobs, object)


def test_importing_the_client_loads_no_http_and_no_service_code() -> None:
    probe = (
        "import sys, json, ftjobs, ftjobs.client, ftjobs.client.models, ftjobs.client.errors;"
        "light = sorted(m for m in ('httpx',) if m in sys.modules);"
        "import ftjobs.client.cli;"
        "heavy = sorted(m for m in ('ftjobs.service', 'ftjobs.jobs', 'ftjobs.launch', 'uvicorn', 'fastapi', 'torch',"
        " 'redis', 'rq') if m in sys.modules);"
        "print(json.dumps([light, heavy]))"
    )
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == [[], []]
