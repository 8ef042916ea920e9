"""The client's failure paths: status -> exception mapping, retries, idempotency, checksums, follow's end."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from ftjobs.client import errors
from ftjobs.client.models import EventType
from tests.client.fake_api import FakeAPI, error_json, job_json

JOB = job_json()["id"]


@pytest.fixture
def api() -> FakeAPI:
    fake = FakeAPI()
    fake.add_job()
    return fake


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Backoff delays the client asked for, without waiting them out."""
    recorded: list[float] = []
    monkeypatch.setattr("ftjobs.client.client.time.sleep", recorded.append)
    return recorded


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (400, errors.BadRequest),
        (401, errors.AuthenticationError),
        (403, errors.PermissionDenied),
        (404, errors.NotFound),
        (409, errors.Conflict),
        (413, errors.PayloadTooLarge),
        (422, errors.ValidationFailed),
        (429, errors.RateLimited),
        (500, errors.ServerError),
        (502, errors.ServerError),
        (503, errors.ServiceUnavailable),
        (504, errors.ServerError),
        (418, errors.APIError),
    ],
)
def test_each_status_maps_to_its_exception(api: FakeAPI, status: int, cls: type[errors.APIError]) -> None:
    body = error_json("some_code", "what went wrong", "hyperparameters.n_epochs", "invalid_request_error")
    api.fail_next(status, body, headers={"X-Request-Id": "req-1"})
    with pytest.raises(errors.APIError) as info:
        api.client(max_retries=0).jobs.get(JOB)
    exc = info.value
    assert type(exc) is cls
    assert (exc.status_code, exc.code, exc.message) == (status, "some_code", "what went wrong")
    assert exc.param == "hyperparameters.n_epochs" and exc.type == "invalid_request_error"
    assert exc.body == body and exc.request_id == "req-1"
    assert "some_code: what went wrong" in str(exc)


def test_not_found_from_the_route_carries_code_and_param(api: FakeAPI) -> None:
    with pytest.raises(errors.NotFound) as info:
        api.client().jobs.get("ftjob-" + "f" * 20)
    assert info.value.code == "job_not_found" and info.value.param == "job_id"


def test_an_error_that_is_not_our_body_still_maps(api: FakeAPI, sleeps: list[float]) -> None:
    api.queued.append(httpx.Response(502, content=b"<html>bad gateway</html>"))
    with pytest.raises(errors.ServerError) as info:
        api.client(max_retries=0).jobs.get(JOB)
    assert info.value.code == "http_502" and "bad gateway" in info.value.message


def test_get_retries_503_honouring_retry_after(api: FakeAPI, sleeps: list[float]) -> None:
    api.fail_next(
        503,
        error_json("redis_unavailable", "try later", type="service_unavailable"),
        headers={"Retry-After": "1.5"},
    )
    job = api.client().jobs.get(JOB)
    assert job.id == JOB
    assert len(api.requests) == 2 and sleeps == [1.5]


def test_retries_give_up_after_max_retries(api: FakeAPI, sleeps: list[float]) -> None:
    for _ in range(3):
        api.fail_next(503, error_json("redis_unavailable", "down"), headers={"Retry-After": "2"})
    with pytest.raises(errors.ServiceUnavailable) as info:
        api.client(max_retries=2).jobs.get(JOB)
    assert len(api.requests) == 3 and sleeps == [2.0, 2.0]
    assert info.value.retry_after == 2.0


def test_backoff_grows_exponentially_with_jitter(api: FakeAPI, sleeps: list[float]) -> None:
    for status in (429, 502, 504):
        api.fail_next(status)
    api.client(max_retries=3).jobs.get(JOB)
    assert len(sleeps) == 3
    for attempt, delay in enumerate(sleeps):
        assert 0.25 * 2**attempt <= delay <= 0.5 * 2**attempt


def test_connection_errors_are_retried_then_raised(api: FakeAPI, sleeps: list[float]) -> None:
    api.raise_next(httpx.ConnectError("refused"))
    assert api.client().jobs.get(JOB).id == JOB
    for _ in range(3):
        api.raise_next(httpx.ReadTimeout("slow"))
    with pytest.raises(errors.APITimeoutError):
        api.client(max_retries=2).jobs.get(JOB)
    assert len(sleeps) == 3


def test_post_without_idempotency_key_is_not_retried(
    api: FakeAPI, sleeps: list[float], tmp_path: Path
) -> None:
    data = tmp_path / "train.jsonl"
    data.write_text('{"text": "hi", "label": "ham"}\n')
    api.fail_next(503, error_json("redis_unavailable", "down"), headers={"Retry-After": "0"})
    with pytest.raises(errors.ServiceUnavailable):
        api.client().files.upload(data)
    api.fail_next(503, error_json("redis_unavailable", "down"))
    with pytest.raises(errors.ServiceUnavailable):
        api.client().jobs.cancel(JOB)
    api.raise_next(httpx.ReadTimeout("sent, but no answer"))
    with pytest.raises(errors.APITimeoutError):
        api.client().jobs.cancel(JOB)
    assert len(api.requests) == 3 and sleeps == []


def test_jobs_create_is_retried_with_the_same_idempotency_key(api: FakeAPI, sleeps: list[float]) -> None:
    api.fail_next(503, error_json("redis_unavailable", "down"), headers={"Retry-After": "0"})
    api.raise_next(httpx.ReadTimeout("lost answer"))
    job = api.client().jobs.create(model="/models/minilm", training_file="file-" + "b" * 20)
    assert job.status == "queued" and len(api.requests) == 3
    keys = {r.headers["Idempotency-Key"] for r in api.requests}
    assert len(keys) == 1
    uuid.UUID(keys.pop())
    api.client().jobs.create(model="m", training_file="file-" + "b" * 20, idempotency_key="my-key")
    assert api.requests[-1].headers["Idempotency-Key"] == "my-key"


def test_a_2xx_body_that_breaks_the_contract_raises(api: FakeAPI) -> None:
    api.queued.append(httpx.Response(200, json={"id": JOB}))
    with pytest.raises(errors.InvalidResponse):
        api.client().jobs.get(JOB)


@pytest.mark.parametrize("tamper", ["header", "listing"])
def test_download_checksum_mismatch_raises_and_writes_nothing(
    api: FakeAPI, tmp_path: Path, tamper: str
) -> None:
    name = "adapter/adapter_model.safetensors"
    api.add_artifact(JOB, name, b"weights" * 1000)
    (api.header_sha if tamper == "header" else api.listing_sha)[name] = "0" * 64
    dest = tmp_path / "out"
    with pytest.raises(errors.ChecksumMismatch) as info:
        api.client().jobs.download(JOB, name, dest / "model.safetensors")
    assert info.value.expected == "0" * 64
    assert list(dest.iterdir()) == []
    with pytest.raises(errors.ChecksumMismatch):
        api.client().jobs.download_all(JOB, dest, prefix="adapter/")
    assert [p for p in dest.rglob("*") if p.is_file()] == []


def test_download_that_breaks_off_leaves_no_file(api: FakeAPI, tmp_path: Path) -> None:
    api.add_artifact(JOB, "metrics.json", b"{}")

    def chunks() -> Iterator[bytes]:
        yield b"{"
        raise httpx.ReadError("connection reset")

    api.routes[f"/v1/jobs/{JOB}/artifacts/metrics.json"] = lambda request: httpx.Response(
        200, content=chunks(), headers={"X-Content-SHA256": "0" * 64}
    )
    with pytest.raises(errors.APIConnectionError):
        api.client().jobs.download(JOB, "metrics.json", tmp_path / "metrics.json")
    assert list(tmp_path.iterdir()) == []


def test_download_of_a_missing_artifact_is_not_found(api: FakeAPI, tmp_path: Path) -> None:
    with pytest.raises(errors.NotFound) as info:
        api.client().jobs.download(JOB, "nope.bin", tmp_path)
    assert info.value.code == "artifact_not_found"
    assert list(tmp_path.iterdir()) == []


def test_follow_stops_once_the_job_is_terminal_and_drained(api: FakeAPI, sleeps: list[float]) -> None:
    api.add_event(JOB, "running (attempt 1)", type="status")
    polls = {"n": 0}

    def progress(fake: FakeAPI, job_id: str) -> None:
        polls["n"] += 1
        if polls["n"] == 1:
            fake.add_event(job_id, "step 1", type="metrics", data={"step": 1, "loss": 0.5})
        elif polls["n"] == 2:
            # The final event lands together with the terminal status: follow must still yield it.
            fake.add_event(job_id, "succeeded", type="status", data={"status": "succeeded"})
            fake.jobs[job_id]["status"] = "succeeded"

    api.on_job_poll = progress
    events = list(api.client().jobs.follow(JOB, poll_interval=0.25))
    assert [e.message for e in events] == ["running (attempt 1)", "step 1", "succeeded"]
    assert events[1].type is EventType.metrics
    assert polls["n"] == 2 and sleeps == [0.25]


def test_follow_pages_through_a_long_backlog(api: FakeAPI, sleeps: list[float]) -> None:
    for i in range(250):
        api.add_event(JOB, f"event {i}")
    api.jobs[JOB]["status"] = "failed"
    events = list(api.client().jobs.follow(JOB))
    assert [e.message for e in events] == [f"event {i}" for i in range(250)]
    assert sleeps == []


def test_wait_returns_the_terminal_job_or_raises(api: FakeAPI, sleeps: list[float]) -> None:
    statuses = iter(["queued", "running", "failed"])
    api.on_job_poll = lambda fake, job_id: fake.jobs[job_id].update(status=next(statuses))
    job = api.client().jobs.wait(JOB, poll_interval=0.1)
    assert job.status == "failed" and sleeps == [0.1, 0.1]
    api.on_job_poll = None
    with pytest.raises(errors.JobFailed):
        api.client().jobs.wait(JOB, raise_on_failure=True)
    api.jobs[JOB]["status"] = "running"
    with pytest.raises(errors.WaitTimeout):
        api.client().jobs.wait(JOB, timeout=0)
