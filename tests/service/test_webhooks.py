"""Webhooks end to end: a real HTTP receiver on loopback, real Redis, real dispatcher processes (and a real worker).

Endpoints are managed through the API; job status changes reach the receiver signed per Standard Webhooks (checked
with the `standardwebhooks` verifier); a failing receiver is retried with backoff; SSRF targets are refused at
creation and at delivery; a crashed dispatcher's work is taken over by another.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis as redis_lib
from standardwebhooks import Webhook

from ftjobs.core import keys
from ftjobs.core.settings import Settings
from ftjobs.core.webhooks import WebhookQueue
from tests.conftest import REPO
from tests.jobs.helpers import eventually
from tests.service.conftest import ROWS, assert_error, jsonl, upload

# Seconds, so that a test takes seconds: retries after 0.5 s, 1 s, 1 s; a lease of 3 s (a crashed dispatcher's
# work is taken over after it); 2 s per phase of an attempt.
FAST = {
    "FTJOBS_WEBHOOK_RETRY_S": "0.5,1,1",
    "FTJOBS_WEBHOOK_LEASE_S": "3",
    "FTJOBS_WEBHOOK_TIMEOUT_S": "2",
}
ALLOW = {"FTJOBS_WEBHOOK_ALLOW_PRIVATE": "1"}  # the receiver is on loopback


@dataclass
class Received:
    at: float
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> dict[str, Any]:
        return dict(json.loads(self.body))


class Receiver:
    """A real HTTP server on 127.0.0.1 that records every request as it arrives and answers from a script:
    `codes` (then 200), after `hang_s` for the first request."""

    def __init__(self) -> None:
        self.requests: list[Received] = []
        self.codes: list[int] = []
        self.hang_s = 0.0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                receiver.requests.append(Received(time.time(), self.path, dict(self.headers.items()), body))
                if len(receiver.requests) == 1 and receiver.hang_s:
                    time.sleep(receiver.hang_s)
                code = receiver.codes.pop(0) if receiver.codes else 200
                with contextlib.suppress(OSError):  # a sender killed while we hung
                    self.send_response(code)
                    self.send_header("content-length", "6")
                    self.end_headers()
                    self.wfile.write(b"x" * 6)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str = "/hook", host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.server.server_address[1]}{path}"

    def at(self, path: str) -> list[Received]:
        return [r for r in self.requests if r.path == path]


class Dispatcher:
    """A real `python -m ftjobs.launch.webhooks` process."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.log = log
        self._fh = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ftjobs.launch.webhooks"],
            cwd=REPO,
            env={**os.environ, **env, "PYTHONUNBUFFERED": "1"},
            stdout=self._fh,
            stderr=subprocess.STDOUT,
        )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def ready(self) -> bool:
        """Whether it is in its loop (its first log line, after its imports: seconds on a loaded machine; a latency
        measured before then would time the start, not a delivery). Redis lists a consumer only once it got an entry."""
        return "webhook dispatcher" in self.output()

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._fh.close()


@pytest.fixture
def settings(env: dict[str, str]) -> Settings:
    """The API of these tests allows loopback targets (the receiver) unless a test builds another."""
    return Settings.from_env({**env, **FAST, **ALLOW})


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.server.shutdown()
    r.server.server_close()


@pytest.fixture
def dispatchers(env: dict[str, str], tmp_path: Path) -> Iterator[Any]:
    """Start dispatcher processes (`start(**env changes)`), each returned once it is in its loop; all are stopped
    at the end."""
    started: list[Dispatcher] = []

    def start(**changes: str) -> Dispatcher:
        d = Dispatcher({**env, **FAST, **ALLOW, **changes}, tmp_path / f"dispatcher-{len(started)}.log")
        started.append(d)
        assert eventually(lambda: d.ready() or d.proc.poll() is not None, 120), d.output()
        assert d.proc.poll() is None, d.output()
        return d

    yield start
    for d in started:
        d.stop()


def new_job(http: httpx.Client, **body: Any) -> dict[str, Any]:
    """A job through the API (no validator runs here, so it stays validating_files until cancelled)."""
    file_id = upload(http, jsonl(ROWS["prompt_completion"] * 4)).json()["id"]
    model = body.pop("model", "tiny-model-that-need-not-exist")
    response = http.post("/v1/jobs", json={"model": model, "training_file": file_id, **body})
    assert response.status_code == 201, response.text
    return dict(response.json())


def deliveries(http: httpx.Client, webhook_id: str) -> list[dict[str, Any]]:
    response = http.get(f"/v1/webhooks/{webhook_id}/deliveries")
    assert response.status_code == 200, response.text
    return list(response.json()["data"])


def status_event_at(http: httpx.Client, job_id: str, status: str) -> float:
    """When the job's status changed to `status`, from its event (written in the same script as the outbox entry)."""
    events = http.get(f"/v1/jobs/{job_id}/events", params={"limit": 1000}).json()["data"]
    return float(next(e["created_at"] for e in events if e["type"] == "status" and e["data"]["status"] == status))


# --------------------------------------------------------------------------- endpoints


def test_endpoints_are_managed_per_tenant_and_the_secret_is_shown_once(http, redis: redis_lib.Redis) -> None:
    assert http.post("/v1/jobs/" + new_job(http)["id"] + "/cancel").status_code == 200
    assert redis.xlen(keys.WEBHOOK_OUTBOX_KEY) == 0  # no endpoint, no outbox entry

    created = http.post("/v1/webhooks", json={"url": "http://127.0.0.1:9/h", "event_types": ["fine_tuning.job.failed"]})
    assert created.status_code == 201, created.text
    hook = created.json()
    assert hook["secret"].startswith("whsec_") and len(base64.b64decode(hook["secret"][6:])) == 32
    assert hook["event_types"] == ["fine_tuning.job.failed"]
    shown = http.get(f"/v1/webhooks/{hook['id']}").json()
    assert "secret" not in shown and shown["url"] == "http://127.0.0.1:9/h"
    listed = http.get("/v1/webhooks").json()
    assert [h["id"] for h in listed["data"]] == [hook["id"]] and "secret" not in json.dumps(listed)

    bad_type = http.post("/v1/webhooks", json={"url": "http://127.0.0.1:9/", "event_types": ["x"]})
    assert_error(bad_type, 422, "validation_error")
    assert_error(http.post("/v1/webhooks", json={}), 422, "validation_error", "url")
    assert_error(http.get("/v1/webhooks/webhook-00000000000000000000"), 404, "webhook_not_found")
    deleted = http.delete(f"/v1/webhooks/{hook['id']}").json()
    assert deleted == {"object": "webhook_endpoint", "id": hook["id"], "deleted": True}
    assert_error(http.get(f"/v1/webhooks/{hook['id']}"), 404, "webhook_not_found")


def test_the_client_and_the_cli_manage_endpoints(client, capsys: pytest.CaptureFixture[str]) -> None:
    from ftjobs.client import cli

    created = client.webhooks.create("http://127.0.0.1:9/h", event_types=["fine_tuning.job.succeeded"])
    assert created.secret.startswith("whsec_") and client.webhooks.get(created.id).url == "http://127.0.0.1:9/h"
    assert cli.main(["webhooks", "list"], client=client) == 0
    assert created.id in capsys.readouterr().out
    argv = ["webhooks", "create", "http://10.0.0.1/", "--event-type", "fine_tuning.job.failed"]
    assert cli.main(argv, client=client) == 0
    assert client.webhooks.deliveries(created.id).data == []
    assert cli.main(["webhooks", "delete", created.id], client=client) == 0
    assert [h.url for h in client.webhooks.list().data] == ["http://10.0.0.1/"]


@pytest.mark.parametrize(
    "url",
    [
        "RECEIVER",  # 127.0.0.1, without the allow setting
        "http://10.1.2.3/hook",
        "http://169.254.169.254/latest/meta-data/",
        "LOCALHOST",  # a name that resolves to loopback
        "http://[::1]/hook",
        "ftp://example.com/hook",
    ],
)
def test_ssrf_targets_are_refused_at_creation(make_client, receiver: Receiver, url: str) -> None:
    strict = make_client(webhook_allow_private=False)
    url = {"RECEIVER": receiver.url(), "LOCALHOST": receiver.url(host="localhost")}.get(url, url)
    error = assert_error(strict.post("/v1/webhooks", json={"url": url}), 422, "webhook_url_not_allowed", "url")
    assert "not allowed" in error["message"]
    assert strict.get("/v1/webhooks").json()["data"] == []


# --------------------------------------------------------------------------- delivery


def test_status_changes_arrive_signed_once_per_subscribed_endpoint(http, receiver: Receiver, dispatchers) -> None:
    every = http.post("/v1/webhooks", json={"url": receiver.url("/every")}).json()
    only_succeeded = http.post(
        "/v1/webhooks", json={"url": receiver.url("/succeeded"), "event_types": ["fine_tuning.job.succeeded"]}
    ).json()
    dispatchers()
    job = new_job(http, metadata={"team": "search"})
    asked = time.time()
    assert http.post(f"/v1/jobs/{job['id']}/cancel").json()["status"] == "cancelled"
    assert eventually(lambda: len(receiver.at("/every")) == 1, 30)
    got = receiver.at("/every")[0]
    print(f"\nwebhook latency, API cancel -> receiver: {(got.at - asked) * 1000:.1f} ms")

    payload = Webhook(every["secret"]).verify(got.body, got.headers)  # raises unless the signature verifies
    assert payload["type"] == "fine_tuning.job.cancelled" and payload["id"] == got.headers["webhook-id"]
    assert payload["data"] == {
        "id": job["id"], "object": "fine_tuning.job", "status": "cancelled", "metadata": {"team": "search"}
    }  # fmt: skip
    assert abs(payload["created_at"] - asked) < 5
    with pytest.raises(Exception, match="signature"):
        Webhook(only_succeeded["secret"]).verify(got.body, got.headers)  # another endpoint's secret does not
    time.sleep(1.5)
    assert receiver.at("/succeeded") == [] and len(receiver.requests) == 1
    [attempt] = deliveries(http, every["id"])
    assert attempt["delivered"] and attempt["status_code"] == 200 and attempt["attempt"] == 1
    assert attempt["event_id"] == payload["id"] and attempt["job_id"] == job["id"]
    assert attempt["response_body"] == "xxxxxx" and attempt["next_attempt_at"] is None


def test_a_paused_job_sends_paused(http, receiver: Receiver, dispatchers) -> None:
    """`paused` (the API pauses a job that has not started at once) is an event like the others."""
    hook = http.post("/v1/webhooks", json={"url": receiver.url()}).json()
    dispatchers()
    job = new_job(http)
    paused = http.post(f"/v1/jobs/{job['id']}/pause")
    assert paused.status_code == 200 and paused.json()["status"] == "paused", paused.text
    assert eventually(lambda: len(receiver.requests) == 1, 30)
    event = Webhook(hook["secret"]).verify(receiver.requests[0].body, receiver.requests[0].headers)
    assert event["type"] == "fine_tuning.job.paused" and event["data"]["status"] == "paused"


def test_delivery_latency_from_the_status_change_to_the_receiver(http, receiver: Receiver, dispatchers) -> None:
    """20 cancels, one at a time: each event's time from the API's status write to the receiver (printed)."""
    http.post("/v1/webhooks", json={"url": receiver.url()})
    dispatchers()
    jobs = [new_job(http)["id"] for _ in range(20)]
    for n, job_id in enumerate(jobs, 1):
        http.post(f"/v1/jobs/{job_id}/cancel")
        assert eventually(lambda n=n: len(receiver.requests) == n, 30)
    latencies = sorted(
        (r.at - status_event_at(http, json.loads(r.body)["data"]["id"], "cancelled")) * 1000 for r in receiver.requests
    )
    median, p95 = latencies[len(latencies) // 2], latencies[int(len(latencies) * 0.95) - 1]
    print(f"\nwebhook latency over {len(latencies)} cancels: median {median:.1f} ms, p95 {p95:.1f} ms, "
          f"max {latencies[-1]:.1f} ms")  # fmt: skip
    assert latencies[0] >= 0 and latencies[-1] < 2000


def test_a_receiver_failing_twice_gets_the_event_exactly_once_more(http, receiver: Receiver, dispatchers) -> None:
    hook = http.post("/v1/webhooks", json={"url": receiver.url()}).json()
    receiver.codes = [500, 503]
    dispatchers()
    job = new_job(http)
    http.post(f"/v1/jobs/{job['id']}/cancel")
    assert eventually(lambda: len(receiver.requests) == 3, 30), receiver.requests
    time.sleep(4)  # longer than every retry left in the schedule: nothing more comes
    assert len(receiver.requests) == 3
    assert len({r.headers["webhook-id"] for r in receiver.requests}) == 1
    assert len({r.body for r in receiver.requests}) == 1
    for r in receiver.requests:
        Webhook(hook["secret"]).verify(r.body, r.headers)
    gaps = [b.at - a.at for a, b in zip(receiver.requests, receiver.requests[1:], strict=False)]
    assert gaps[0] >= 0.45 and gaps[1] >= 0.95, gaps  # the backoff schedule: 0.5 s, then 1 s
    history = deliveries(http, hook["id"])  # newest first
    assert [(d["attempt"], d["status_code"], d["delivered"]) for d in history] == [
        (3, 200, True), (2, 503, False), (1, 500, False)
    ]  # fmt: skip
    assert history[1]["error"] == "HTTP 503" and history[1]["next_attempt_at"] is not None


def test_a_delivery_to_a_refused_address_fails_without_connecting(http, receiver: Receiver, dispatchers) -> None:
    """The endpoints were allowed when they were created; this dispatcher's deployment allows no private target
    (as after a DNS change): each attempt resolves again and sends nothing."""
    by_ip = http.post("/v1/webhooks", json={"url": receiver.url()}).json()
    by_name = http.post("/v1/webhooks", json={"url": receiver.url(host="localhost")}).json()
    dispatchers(FTJOBS_WEBHOOK_ALLOW_PRIVATE="0", FTJOBS_WEBHOOK_RETRY_S="0.2")
    http.post(f"/v1/jobs/{new_job(http)['id']}/cancel")
    for hook, why in ((by_ip, "127.0.0.1, a loopback address"), (by_name, "localhost resolves to")):
        assert eventually(lambda hook=hook: len(deliveries(http, hook["id"])) == 2, 30)
        for attempt in deliveries(http, hook["id"]):
            assert attempt["status_code"] is None and not attempt["delivered"]
            assert attempt["error"].startswith("not sent: ") and why in attempt["error"], attempt
    assert receiver.requests == []


def test_a_crashed_dispatchers_work_is_taken_over(http, receiver: Receiver, dispatchers, redis) -> None:
    hook = http.post("/v1/webhooks", json={"url": receiver.url()}).json()
    # 1. Killed mid-attempt: the receiver holds the first request; the dispatcher dies while waiting for it.
    receiver.hang_s = 20
    first = dispatchers(FTJOBS_WEBHOOK_TIMEOUT_S="30")
    http.post(f"/v1/jobs/{new_job(http)['id']}/cancel")
    assert eventually(lambda: len(receiver.requests) == 1, 30)
    first.stop(signal.SIGKILL)
    killed_at = time.time()
    dispatchers()
    assert eventually(lambda: len(receiver.requests) == 2, 30), receiver.requests
    assert receiver.requests[1].at - killed_at < 3 + 5  # within the lease (3 s) and a loop or two
    assert receiver.requests[0].body == receiver.requests[1].body
    assert eventually(lambda: [d["delivered"] for d in deliveries(http, hook["id"])] == [True], 10)


def test_an_outbox_entry_read_by_a_dead_dispatcher_is_claimed_by_another(
    http, receiver: Receiver, dispatchers, redis: redis_lib.Redis
) -> None:
    """A dispatcher that read an entry and died before fanning it out leaves it pending in the group: another
    takes it over once it sat idle for the lease (XAUTOCLAIM)."""
    hook = http.post("/v1/webhooks", json={"url": receiver.url()}).json()
    WebhookQueue(redis, "dead", lease_s=3).ensure_group()
    job = new_job(http)
    http.post(f"/v1/jobs/{job['id']}/cancel")
    read = redis.xreadgroup(keys.WEBHOOK_GROUP, "dead", {keys.WEBHOOK_OUTBOX_KEY: ">"}, count=10)
    read_at = time.time()
    [(_, [(entry_id, fields)])] = read  # the one status change, now pending for the dead consumer
    assert fields[b"job"].decode() == job["id"] and fields[b"status"] == b"cancelled"
    dispatchers()
    assert eventually(lambda: len(receiver.requests) == 1, 30)
    assert receiver.requests[0].at - read_at >= 2.5  # not before the entry sat idle for the lease
    got = receiver.requests[0]
    assert Webhook(hook["secret"]).verify(got.body, got.headers)["data"]["id"] == job["id"]
    assert redis.xpending(keys.WEBHOOK_OUTBOX_KEY, keys.WEBHOOK_GROUP)["pending"] == 0


def test_a_worker_run_job_sends_running_and_succeeded(
    http, receiver: Receiver, dispatchers, worker, tiny_causal_lm: Path
) -> None:
    """The statuses a real worker writes (GUARDED_WRITE in jobs/report.py) reach the receiver; the latency from
    each status change to the receiver is printed."""
    hook = http.post("/v1/webhooks", json={"url": receiver.url()}).json()
    dispatchers()
    job = new_job(
        http,
        model=str(tiny_causal_lm),
        method={"type": "lora", "r": 4, "alpha": 8},
        hyperparameters={"n_epochs": 1, "batch_size": 4, "max_seq_length": 32, "max_steps": 2},
    )
    done = lambda: http.get(f"/v1/jobs/{job['id']}").json()["status"] in ("succeeded", "failed")  # noqa: E731
    assert eventually(done, 300), worker.output()[-3000:]
    events = http.get(f"/v1/jobs/{job['id']}/events", params={"limit": 1000}).json()["data"]
    statuses = [e["data"]["status"] for e in events if e["type"] == "status"]
    passed = [s for s in statuses if s in keys.WEBHOOK_STATUSES]  # what has an event type
    assert eventually(lambda: len(receiver.requests) == len(passed), 30), receiver.requests
    time.sleep(1)
    got = {Webhook(hook["secret"]).verify(r.body, r.headers)["type"]: r for r in receiver.requests}
    assert sorted(got) == sorted(f"fine_tuning.job.{s}" for s in passed) and len(receiver.requests) == len(passed)
    for status in passed:
        latency = got[f"fine_tuning.job.{status}"].at - status_event_at(http, job["id"], status)
        print(f"\nwebhook latency, worker's `{status}` -> receiver: {latency * 1000:.1f} ms")
        assert 0 <= latency < 5
    assert passed == ["running", "succeeded"], worker.output()[-3000:]
