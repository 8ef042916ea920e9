"""`ftjobs up` as a library: the Stack starts embedded Redis + the API + a worker, and stops all of them."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO
from urllib.parse import urlsplit

import httpx
import pytest

from ftjobs.client import Client
from ftjobs.launch.embedded import free_port
from ftjobs.launch.stack import Stack

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("ftjobs.service.main") is None or importlib.util.find_spec("ftjobs.jobs.worker") is None,
    reason="service/ or jobs/ is not in the tree yet",
)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by its parent) counts as gone.
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(")")[-1].split()[0] == "Z")


def test_stack_serves_the_api_and_stops_everything(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FTJOBS_REDIS_URL", raising=False)
    monkeypatch.delenv("FTJOBS_MODEL_ROOTS", raising=False)
    with Stack(tmp_path / "data", port=None, workers=2, log_dir=tmp_path / "logs") as stack:
        pids = stack.pids()
        assert len(pids) == 6  # two workers, the validator, the webhook dispatcher, the API, Redis
        with Client(stack.url) as ftjobs:
            assert ftjobs.ready().redis is True
            assert ftjobs.jobs.list().data == []
        redis_url = urlsplit(stack.env["FTJOBS_REDIS_URL"])
        assert redis_url.hostname == "127.0.0.1" and redis_url.password  # embedded: loopback, with a password
        assert str(tmp_path / "data" / "models") in stack.env["FTJOBS_MODEL_ROOTS"]
    assert [pid for pid in pids if alive(pid)] == []
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{stack.url}/healthz")
    stack.stop()  # a second stop is harmless


def launch_up(data_dir: Path, port: int, stderr: int | IO[str] = subprocess.PIPE) -> subprocess.Popen[str]:
    """`ftjobs up` as a user runs it: its own process group, as in a terminal, with Ctrl-C enabled."""
    env = {k: v for k, v in os.environ.items() if k not in ("FTJOBS_REDIS_URL", "FTJOBS_API_KEYS")}
    return subprocess.Popen(
        [sys.executable, "-m", "ftjobs.launch.cli", "up", "--port", str(port), "--data-dir", str(data_dir)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


@pytest.mark.parametrize("stop", ["sigterm", "ctrl-c"])
def test_ftjobs_up_stops_cleanly(tmp_path: Path, stop: str) -> None:
    port = free_port()
    proc = launch_up(tmp_path, port)
    children: list[int] = []
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == f"http://127.0.0.1:{port}"  # printed once /readyz is 200
        assert httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200
        children = _children(proc.pid)
        assert len(children) >= 3  # API, worker, Redis
        if stop == "sigterm":
            proc.send_signal(signal.SIGTERM)
        else:
            os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C does: the whole foreground group gets it
        assert proc.wait(60) == 0
        deadline = time.monotonic() + 5
        while any(alive(pid) for pid in children) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert [pid for pid in children if alive(pid)] == []
        assert "Traceback" not in (proc.stderr.read() if proc.stderr else "")
        # Redis is stopped last, by us (SIGTERM): a Ctrl-C must not reach it while workers still use it.
        assert "SIGINT" not in (tmp_path / "redis" / "redis.log").read_text()
    finally:  # on a failed assertion: leave nothing running (Redis has a session of its own)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        for pid in children:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_ftjobs_up_on_a_busy_port_fails_before_starting_anything(tmp_path: Path) -> None:
    with socket.socket() as taken:  # another server on the port: it accepts connections, it is not ftjobs
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = launch_up(tmp_path, port)
        try:
            out, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    assert proc.returncode == 1
    assert out == ""  # the URL is printed only once the stack is up
    assert err.strip().splitlines() == [
        f"error: stack_error: port {port} on 127.0.0.1 is already in use: stop what uses it or choose another port"
    ]
    assert not (tmp_path / "redis").exists()  # Redis was never started
    assert redis_servers_in(tmp_path) == []


def redis_servers_in(data_dir: Path) -> list[int]:
    """Running redis-server processes with their data under `data_dir`."""
    found = []
    for proc_dir in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError):
            # redis-server rewrites its command line (`redis-server 127.0.0.1:PORT`) but works in its --dir.
            if b"redis-server" in (proc_dir / "cmdline").read_bytes():
                if Path(os.readlink(proc_dir / "cwd")).is_relative_to(data_dir):
                    found.append(int(proc_dir.name))
    return [pid for pid in found if alive(pid)]


def _children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]

