"""The client and the CLI following a job live over Server-Sent Events, on a live stack (uvicorn, Redis, a worker).

A TCP proxy between the client and the API cuts event streams on purpose: mid-event, so the client must resume
with Last-Event-ID, or right after the headers every time, so it must fall back to polling. Either way every
event arrives exactly once.
"""

from __future__ import annotations

import asyncio
import io
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ftjobs.client import sse
from ftjobs.client.client import AsyncClient, Client
from ftjobs.client.display import format_event
from ftjobs.client.models import Event
from ftjobs.client.progress import Tracker, live_view
from tests.conftest import REPO
from tests.service.api_process import ApiProcess, api_process
from tests.service.conftest import ROWS, jsonl
from tests.service.tenant_jobs import tiny_job_request

FTJOBS = [sys.executable, "-m", "ftjobs.launch.cli"]


@pytest.fixture
def live(env: dict[str, str], tmp_path: Path) -> Iterator[ApiProcess]:
    with api_process(env, tmp_path / "api.log", FTJOBS_SSE_KEEPALIVE_S="1") as api:
        yield api


def submit(api: Client, model: Path, tmp_path: Path) -> str:
    (tmp_path / "train.jsonl").write_bytes(jsonl(ROWS["prompt_completion"] * 8))
    (tmp_path / "valid.jsonl").write_bytes(jsonl(ROWS["prompt_completion"][:4] * 2))
    train, valid = api.files.upload(tmp_path / "train.jsonl"), api.files.upload(tmp_path / "valid.jsonl")
    return api.jobs.create(tiny_job_request(model, train.id, valid.id)).id  # type: ignore[arg-type]


class CuttingProxy:
    """A TCP proxy to the API that cuts the first `cuts` event streams (`stream=true`) once `body_bytes` bytes of
    their body went through (0: right after the headers; `cuts=None`: every one). Other requests pass whole."""

    def __init__(self, upstream: str, body_bytes: int, cuts: int | None) -> None:
        host, port = upstream.removeprefix("http://").split(":")
        self.upstream = (host, int(port))
        self.body_bytes, self.cuts_left = body_bytes, cuts
        self.cut = 0
        self.resumed_with: list[str] = []  # the Last-Event-ID of each stream request that carried one
        self.server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.server.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn, socket.create_connection(self.upstream) as up:
            request = b""
            while b"\r\n\r\n" not in request:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                request += chunk
            head, _, rest = request.partition(b"\r\n\r\n")
            lines = [h for h in head.split(b"\r\n") if not h.lower().startswith(b"connection:")]
            for line in lines:
                if line.lower().startswith(b"last-event-id:"):
                    self.resumed_with.append(line.split(b":", 1)[1].strip().decode())
            # One request per connection: each stream request is seen (and maybe cut) here.
            up.sendall(b"\r\n".join([*lines, b"Connection: close"]) + b"\r\n\r\n" + rest)
            is_stream = b"stream=true" in lines[0]
            cutting = is_stream and (self.cuts_left is None or self.cuts_left > 0)
            seen, body_start = b"", -1
            while True:
                data = up.recv(65536)
                if not data:
                    return
                if cutting:
                    seen += data
                    if body_start < 0 and b"\r\n\r\n" in seen:
                        body_start = seen.index(b"\r\n\r\n") + 4
                    if body_start >= 0 and len(seen) - body_start >= self.body_bytes:
                        conn.sendall(seen[: body_start + self.body_bytes])
                        self.cut += 1
                        if self.cuts_left is not None:
                            self.cuts_left -= 1
                        return  # both sockets close: the client sees the stream end mid-body
                    continue
                conn.sendall(data)

    def close(self) -> None:
        self.server.close()


def collect(make: Callable[[], Client], job_id: str, into: list[Event]) -> Callable[[], None]:
    def run() -> None:
        with make() as api:
            into.extend(api.jobs.stream_events(job_id))

    return run


def test_stream_events_yields_every_event_once_through_cuts_and_fallback(  # type: ignore[no-untyped-def]
    live, worker, tiny_causal_lm, tmp_path
):
    resuming = CuttingProxy(live.url, body_bytes=700, cuts=6)  # mid-event, six times, then whole
    refusing = CuttingProxy(live.url, body_bytes=0, cuts=None)  # every stream: only polling gets through
    with Client(live.url) as api:
        job_id = submit(api, tiny_causal_lm, tmp_path)
        direct: list[Event] = []
        resumed: list[Event] = []
        polled: list[Event] = []
        awaited: list[Event] = []

        async def async_stream() -> None:
            async with AsyncClient(live.url) as aapi:
                awaited.extend([e async for e in aapi.jobs.stream_events(job_id)])

        readers = [
            threading.Thread(target=collect(lambda: Client(live.url), job_id, direct)),
            threading.Thread(target=collect(lambda: Client(resuming.url), job_id, resumed)),
            threading.Thread(target=collect(lambda: Client(refusing.url), job_id, polled)),
            threading.Thread(target=lambda: asyncio.run(async_stream())),
        ]
        for reader in readers:
            reader.start()
        for reader in readers:
            reader.join(600)
        assert not any(r.is_alive() for r in readers)
        full = api.jobs.all_events(job_id)
        final = api.jobs.get(job_id)
    resuming.close()
    refusing.close()

    assert final.status == "succeeded", (final.error, worker.output()[-3000:])
    assert full[-1].type == "status" and full[-1].data["status"] == "succeeded"
    for name, got in (("direct", direct), ("resumed", resumed), ("polled", polled), ("async", awaited)):
        assert [e.id for e in got] == [e.id for e in full], name  # nothing lost, nothing repeated
        assert got == full, name
    assert resuming.cut == 6 and len(resuming.resumed_with) >= 6  # each cut resumed with Last-Event-ID ...
    assert set(resuming.resumed_with) <= {e.id for e in full}  # ... naming an event it had seen whole
    assert refusing.cut >= 3  # it gave up on streams, then polled
    print(f"{len(full)} events; resumed after {resuming.cut} cuts; polled after {refusing.cut} refused streams")


def run_cli(url: str, *args: str, **kw: Any) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*FTJOBS, "--url", url, *args],
        cwd=REPO,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


def test_cli_logs_follow_and_wait_print_every_event_once(live, worker, tiny_causal_lm, tmp_path):  # type: ignore[no-untyped-def]
    with Client(live.url) as api:
        job_id = submit(api, tiny_causal_lm, tmp_path)
        logs = run_cli(live.url, "logs", "-f", job_id)  # stdout is a pipe: plain lines, no escape codes
        waits = run_cli(live.url, "wait", job_id)
        out, err = logs.communicate(timeout=600)
        wait_out, wait_err = waits.communicate(timeout=600)
        full = api.jobs.all_events(job_id)
    assert logs.returncode == 0, err
    assert "\x1b" not in out and "\r" not in out
    lines = out.splitlines()
    assert len(lines) == len(full), out  # one line per event, each once
    for line, event in zip(lines, full, strict=True):
        plain = format_event(event)
        assert line[:9] == plain[:9]  # the time
        if event.type != "metrics":
            assert line == plain
        else:
            assert f"step {event.data['step']}" in line
    assert waits.returncode == 0, wait_err
    assert "\x1b" not in wait_out
    assert f"{job_id}  succeeded" in wait_out  # the final description (results, artifacts) ends it


def test_a_closed_pipe_ends_logs_follow_quietly(live, tiny_causal_lm, tmp_path):  # type: ignore[no-untyped-def]
    with Client(live.url) as api:
        job_id = submit(api, tiny_causal_lm, tmp_path)  # no worker: it waits in validating_files
        # `ftjobs logs -f J | head -1`: head leaves after the first line; the next event hits a closed pipe.
        pipeline = subprocess.Popen(
            ["bash", "-c", f"set -o pipefail; {' '.join(FTJOBS)} --url {live.url} logs -f {job_id} | head -1"],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert pipeline.stdout is not None
        first = pipeline.stdout.readline()
        assert "Job created." in first
        api.jobs.cancel(job_id)
        rest, err = pipeline.communicate(timeout=120)
    assert pipeline.returncode == 0, err
    assert rest == "" and err == ""


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def metrics_event(step: int, loss: float) -> Event:
    data = {"split": "train", "step": step, "epoch": 0.5, "values": {"loss": loss}}
    return Event(id=f"1-{step}", created_at=time.time(), type="metrics", message="m", data=data)


def test_the_live_views_plain_in_a_pipe_a_redrawn_line_or_rich_on_a_terminal() -> None:
    tracker = Tracker(total=8, eta_seconds=70)
    tracker.see(metrics_event(4, 0.6712))
    assert tracker.line() == "[############------------] 4/8 steps  loss 0.6712  ETA 1m10s"

    pipe = io.StringIO()
    plain = live_view(pipe)
    plain.show("an event", tracker)
    plain.show(None, tracker)
    plain.close()
    assert pipe.getvalue() == "an event\n"  # the events only, once each, no escape codes

    terminal = Terminal()
    line = live_view(terminal, rich=False)
    line.show("first", tracker)
    line.show("second", tracker)
    line.close()
    assert terminal.getvalue() == (
        f"first\n{tracker.line()}\r\x1b[2Ksecond\n{tracker.line()}\n"  # the progress line stays at the bottom
    )

    fancy = Terminal()
    bar = live_view(fancy)
    bar.show("an event", tracker)
    bar.close()
    assert "an event" in fancy.getvalue() and "4/8" in fancy.getvalue() and "loss 0.6712" in fancy.getvalue()


def test_the_sse_decoder_follows_the_whatwg_rules() -> None:
    decoder = sse.Decoder()
    lines = [": ping", "", "retry: 2000", "", "event: status", "data: {\"a\":", "data: 1}", "id: 5-0", ""]
    lines += ["data:no space", "", "id: 6-0", ""]
    messages = [m for m in map(decoder.feed, lines) if m is not None]
    assert messages == [sse.Message("status", '{"a":\n1}', "5-0"), sse.Message("message", "no space", "5-0")]
    assert decoder.last_event_id == "6-0"  # an id alone moves the cursor without dispatching
