"""Live events as Server-Sent Events over a real socket: a live uvicorn, real Redis, a real worker and job.

The in-process TestClient buffers a whole response, so every stream here is read from `uvicorn` through
httpx, line by line as it arrives.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.jobs.helpers import eventually
from tests.service.api_process import ApiProcess, api_process
from tests.service.conftest import ROWS, assert_error
from tests.service.tenant_jobs import TERMINAL, bearer, tiny_job_request, upload_as

ALPHA, BETA = "sk-sse-alpha-0123456789", "sk-sse-beta-0123456789"
KEEPALIVE_S = 0.5
MAX_STREAMS = 2


@pytest.fixture
def live(env: dict[str, str], tmp_path: Path) -> Iterator[ApiProcess]:
    """The API as a process, two tenants, keep-alives every KEEPALIVE_S, at most MAX_STREAMS streams a tenant."""
    with api_process(
        env,
        tmp_path / "api.log",
        FTJOBS_API_KEYS=f"{ALPHA}:alpha,{BETA}:beta",
        FTJOBS_SSE_KEEPALIVE_S=str(KEEPALIVE_S),
        FTJOBS_SSE_MAX_STREAMS=str(MAX_STREAMS),
    ) as api:
        yield api


@pytest.fixture
def http(live: ApiProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live.url, timeout=httpx.Timeout(60, read=30)) as client:
        yield client


def create_job(http: httpx.Client, model: Path, key: str = ALPHA) -> str:
    rows = ROWS["prompt_completion"] * 8
    train, valid = upload_as(http, key, rows), upload_as(http, key, rows[:4], name="valid.jsonl")
    created = http.post("/v1/jobs", json=tiny_job_request(model, train, valid), headers=bearer(key))
    assert created.status_code == 201, created.text
    return str(created.json()["id"])


def all_events(http: httpx.Client, job_id: str, key: str = ALPHA) -> list[dict[str, Any]]:
    """The job's whole event list, paged as JSON."""
    events: list[dict[str, Any]] = []
    params: dict[str, Any] = {"limit": 1000}
    while True:
        page = http.get(f"/v1/jobs/{job_id}/events", params=params, headers=bearer(key))
        assert page.status_code == 200, page.text
        events += page.json()["data"]
        if not page.json()["has_more"]:
            return events
        params["after"] = events[-1]["id"]


class Stream:
    """One open SSE response, read as frames: {"id", "event", "data"} dicts, and keep-alive comments counted."""

    def __init__(self, response: httpx.Response, deadline_s: float = 300) -> None:
        self.response = response
        self.deadline = time.monotonic() + deadline_s  # keep-alives arrive often: a stuck job fails the test here
        self.keepalives = 0
        self.ended = False  # the server closed the body
        self._lines = response.iter_lines()

    def frames(self) -> Iterator[dict[str, str]]:
        block: dict[str, str] = {}
        for line in self._lines:
            assert time.monotonic() < self.deadline, f"the stream is still open; last frame: {block}"
            if line.startswith(":"):
                self.keepalives += 1
            elif line:
                name, _, value = line.partition(": ")
                block[name] = value
            elif "data" in block:
                yield block
                block = {}
            else:
                block = {}  # `retry:` only
        self.ended = True

    def events(self) -> Iterator[dict[str, Any]]:
        import json

        for frame in self.frames():
            event = json.loads(frame["data"])
            assert frame["id"] == event["id"] and frame["event"] == event["type"], frame
            yield event


@contextmanager
def open_stream(
    http: httpx.Client, job_id: str, key: str = ALPHA, last_event_id: str | None = None, accept: bool = False
) -> Iterator[Stream]:
    """`?stream=true` (or only `Accept: text/event-stream`), resuming after `last_event_id`."""
    headers = bearer(key) | ({"Last-Event-ID": last_event_id} if last_event_id else {})
    params = {}
    if accept:
        headers["Accept"] = "text/event-stream"
    else:
        params["stream"] = "true"
    with http.stream("GET", f"/v1/jobs/{job_id}/events", params=params, headers=headers) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-cache"
        yield Stream(response)


def is_terminal_event(event: dict[str, Any]) -> bool:
    return event["type"] == "status" and event["data"].get("status") in TERMINAL


def test_a_dropped_stream_resumes_with_last_event_id_nothing_lost_nothing_repeated(  # type: ignore[no-untyped-def]
    http, worker, tiny_causal_lm
):
    job_id = create_job(http, tiny_causal_lm)
    seen: list[dict[str, Any]] = []
    drops_mid_job = 0

    # Drop 1: after the first event. Drop 2: after the job starts running. Both while the job is live.
    for stop in (lambda e: True, lambda e: e["type"] == "status" and e["data"].get("status") == "running"):
        with open_stream(http, job_id, last_event_id=seen[-1]["id"] if seen else None) as stream:
            for event in stream.events():
                seen.append(event)
                if stop(event):
                    break
        status = http.get(f"/v1/jobs/{job_id}", headers=bearer(ALPHA)).json()["status"]
        drops_mid_job += status not in TERMINAL
        time.sleep(1)  # events keep coming while no one listens
    assert drops_mid_job >= 1, "the job ended before the stream could be dropped mid-job"

    started, opened_at, delays = time.monotonic(), time.time(), []
    with open_stream(http, job_id, last_event_id=seen[-1]["id"]) as stream:
        for event in stream.events():  # to the end: the server closes after the terminal event
            seen.append(event)
            if event["created_at"] > opened_at:  # written while we listened: how long it took to arrive
                delays.append(time.time() - event["created_at"])
        assert stream.ended
    delays = sorted(d * 1000 for d in delays)
    print(f"resumed stream: {time.monotonic() - started:.1f} s to the end of the job, {len(seen)} events in all")
    if delays:
        print(f"live delivery, {len(delays)} events: median {delays[len(delays) // 2]:.0f} ms, max {delays[-1]:.0f} ms")

    full = all_events(http, job_id)
    assert [e["id"] for e in seen] == [e["id"] for e in full]  # nothing lost, nothing repeated, in order
    assert seen == full  # and each event exactly as the JSON list has it
    assert is_terminal_event(seen[-1]) and not any(is_terminal_event(e) for e in seen[:-1])
    assert seen[-1]["data"]["status"] == "succeeded", (seen[-1]["message"], worker.output()[-3000:])


def test_an_idle_stream_sends_keepalives_then_ends_with_the_job(http, tiny_causal_lm):  # type: ignore[no-untyped-def]
    job_id = create_job(http, tiny_causal_lm)  # no worker: it stays validating_files until cancelled
    with open_stream(http, job_id, accept=True) as stream:  # Accept alone asks for the stream
        events = stream.events()
        first = next(events)
        assert first["type"] == "status" and first["data"]["status"] == "validating_files"
        while stream.keepalives < 3:  # `: ping` comments, every KEEPALIVE_S while nothing happens
            line = next(stream._lines)
            if line.startswith(":"):
                stream.keepalives += 1
            else:
                assert line == "", line
        cancelled_at = time.monotonic()
        assert http.post(f"/v1/jobs/{job_id}/cancel", headers=bearer(ALPHA)).status_code == 200
        rest = list(events)
        latency = time.monotonic() - cancelled_at
        assert stream.ended and [e["data"]["status"] for e in rest] == ["cancelled"]
    print(f"cancel -> its event on the open stream: {latency * 1000:.0f} ms")
    assert latency < 10

    # A finished job: the backlog, then the end at once; after its last event: nothing, and the end at once.
    for last_event_id, expected in ((None, [first, *rest]), (rest[-1]["id"], [])):
        started = time.monotonic()
        with open_stream(http, job_id, last_event_id=last_event_id) as stream:
            assert list(stream.events()) == expected and stream.ended
        assert time.monotonic() - started < KEEPALIVE_S * 4


def test_streams_are_scoped_by_tenant_bounded_and_checked(http, tiny_causal_lm):  # type: ignore[no-untyped-def]
    job_id = create_job(http, tiny_causal_lm)
    stream_params = {"stream": "true"}
    theirs = http.get(f"/v1/jobs/{job_id}/events", params=stream_params, headers=bearer(BETA))
    assert_error(theirs, 404, "job_not_found")
    theirs = http.get(
        f"/v1/jobs/{job_id}/events", headers=bearer(BETA) | {"Accept": "text/event-stream"}
    )
    assert_error(theirs, 404, "job_not_found")
    bad = http.get(
        f"/v1/jobs/{job_id}/events", params=stream_params, headers=bearer(ALPHA) | {"Last-Event-ID": "soon"}
    )
    assert_error(bad, 422, "validation_error", "Last-Event-ID")
    assert http.get(f"/v1/jobs/{job_id}/events", params=stream_params).status_code == 401

    # At most MAX_STREAMS open streams per tenant; a closed one gives its slot back (noticed at its next write).
    with open_stream(http, job_id), open_stream(http, job_id):
        over = http.get(f"/v1/jobs/{job_id}/events", params=stream_params, headers=bearer(ALPHA))
        assert_error(over, 429, "too_many_streams")
        assert over.headers["retry-after"]
        other = http.get(f"/v1/jobs/{job_id}/events", params=stream_params, headers=bearer(BETA))
        assert other.status_code == 404  # another tenant's slots are its own (and this job is not theirs)
        assert http.get(f"/v1/jobs/{job_id}/events", headers=bearer(ALPHA)).status_code == 200  # pages still work

    def opens() -> bool:
        with http.stream("GET", f"/v1/jobs/{job_id}/events", params=stream_params, headers=bearer(ALPHA)) as r:
            return r.status_code == 200

    assert eventually(opens, timeout=30)
