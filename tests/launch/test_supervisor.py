"""`ftjobs up` keeps running when a part dies: restarts with backoff, Redis on its port with its data."""

from __future__ import annotations

import errno
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import httpx
import pytest
import redis as redis_lib

from ftjobs.launch.embedded import free_port
from ftjobs.launch.stack import Stack, StackError
from ftjobs.launch.supervision import restart_delay
from tests.launch.test_stack import alive, launch_up, redis_servers_in

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("ftjobs.service.main") is None or importlib.util.find_spec("ftjobs.jobs.worker") is None,
    reason="service/ or jobs/ is not in the tree yet",
)

T = TypeVar("T")
JSONL = b'{"prompt": "a", "completion": "b"}\n{"prompt": "c", "completion": "d"}\n'


def wait_for(check: Callable[[], T], timeout: float, what: str) -> T:
    """The first truthy value of `check()`, polled until `timeout` s (the test machine is slow)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:g} s: {what}")
        time.sleep(0.2)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("FTJOBS_REDIS_URL", "FTJOBS_MODEL_ROOTS", "FTJOBS_API_KEYS", "FTJOBS_PREEMPT_S"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def stack(tmp_path: Path, clean_env: None) -> Iterator[Stack]:
    """A started stack with one training worker; nothing supervises it but the test's supervise_once()."""
    with Stack(tmp_path / "data", port=None, workers=1, log_dir=tmp_path / "logs") as running:
        yield running


def supervise_until(stack: Stack, check: Callable[[], T], timeout: float, what: str) -> T:
    def step() -> T:
        stack.supervise_once()
        return check()

    return wait_for(step, timeout, what)


def ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


# --------------------------------------------------------------------------- policy


def test_restart_delay_doubles_up_to_30_s() -> None:
    assert [restart_delay(n) for n in range(8)] == [1, 2, 4, 8, 16, 30, 30, 30]
    assert restart_delay(10_000) == 30


def test_stop_timeout_is_the_preemption_bound_plus_a_margin(tmp_path: Path, clean_env: None) -> None:
    assert Stack(tmp_path, port=None).stop_timeout == 45  # FTJOBS_PREEMPT_S defaults to 30
    assert Stack(tmp_path, port=None, env={"FTJOBS_PREEMPT_S": "5"}).stop_timeout == 20
    assert Stack(tmp_path, port=None, env={"FTJOBS_PREEMPT_S": "5"}, stop_timeout=3).stop_timeout == 3
    with pytest.raises(StackError, match="FTJOBS_PREEMPT_S"):
        Stack(tmp_path, port=None, env={"FTJOBS_PREEMPT_S": "soon"})


# --------------------------------------------------------------------------- in-process supervision


def test_a_killed_worker_is_restarted_with_backoff(stack: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    def kill_and_wait_for_restart() -> float:
        old = stack.pid("worker-1")
        assert old is not None
        killed = time.monotonic()
        os.kill(old, signal.SIGKILL)
        supervise_until(stack, lambda: stack.pid("worker-1") not in (None, old), 60, "a new worker-1")
        return time.monotonic() - killed

    assert kill_and_wait_for_restart() >= 1.0
    assert stack.restarts == {"redis": 0, "api": 0, "worker-1": 1, "validator": 0, "webhooks": 0}
    assert kill_and_wait_for_restart() >= 2.0  # died again at once: twice the wait
    assert stack.restarts["worker-1"] == 2
    stack.stable_after = 1.0  # it has stayed up long enough: the backoff starts over
    time.sleep(1.5)
    assert kill_and_wait_for_restart() >= 1.0
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("ftjobs:")]
    assert lines == [
        "ftjobs: worker-1 exited with code -9; restarting in 1 s (restart 1)",
        "ftjobs: worker-1 exited with code -9; restarting in 2 s (restart 2)",
        "ftjobs: worker-1 exited with code -9; restarting in 1 s (restart 3)",
    ]
    assert len(stack.pids()) == 5 and all(alive(pid) for pid in stack.pids())
    assert ready(stack.url)


def test_redis_comes_back_on_its_port_with_its_data_or_says_why(
    stack: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    url = stack.env["FTJOBS_REDIS_URL"]
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    with redis_lib.Redis.from_url(url) as r:
        r.set("written-before", "the kill")
    time.sleep(1.5)  # AOF everysec: on disk within a second
    old = stack.pid("redis")
    assert old is not None
    os.kill(old, signal.SIGKILL)
    err: list[str] = []

    def said(text: str) -> bool:
        err.append(capsys.readouterr().err)
        return text in "".join(err)

    # Another process takes the port before Redis is restarted there: we must say so and keep trying.
    taker = socket.socket()
    taker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        wait_for(lambda: _bind(taker, port), 10, f"port {port} free after the kill")
        taker.listen()
        supervise_until(stack, lambda: said("ftjobs: redis did not restart"), 30, "a failed restart")
        assert stack.pid("redis") is None
        assert stack.restarts["redis"] == 0
    finally:
        taker.close()
    supervise_until(stack, lambda: stack.pid("redis"), 60, "a new redis-server")
    said("")
    assert [line for line in "".join(err).splitlines() if line.startswith("ftjobs:")] == [
        "ftjobs: redis exited with code -9; restarting in 1 s (restart 1)",
        f"ftjobs: redis did not restart: port {port} on 127.0.0.1 is already in use: Redis must come back on "
        "that port (the API and workers use it); stop what took it; restarting in 2 s (restart 1)",
    ]
    assert stack.restarts["redis"] == 1
    assert stack.env["FTJOBS_REDIS_URL"] == url  # the API and workers were told this one
    with redis_lib.Redis.from_url(url) as r:
        assert r.get("written-before") == b"the kill"  # the AOF brought it back
    supervise_until(stack, lambda: ready(stack.url), 60, "/readyz 200 again")
    assert stack.restarts == {"redis": 1, "api": 0, "worker-1": 0, "validator": 0, "webhooks": 0}


def _bind(sock: socket.socket, port: int) -> bool:
    try:
        sock.bind(("127.0.0.1", port))
    except OSError as exc:
        assert exc.errno == errno.EADDRINUSE
        return False
    return True


def test_nothing_is_restarted_once_asked_to_stop(stack: Stack) -> None:
    validator = stack.pid("validator")
    assert validator is not None

    def kill_then_sigterm() -> None:
        # Only once run_until_stopped handles SIGTERM: the default action would end the test run.
        wait_for(lambda: signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL, 30, "a SIGTERM handler")
        os.kill(validator, signal.SIGKILL)
        time.sleep(0.3)  # seen dead, restart due in 1 s: the SIGTERM comes first
        os.kill(os.getpid(), signal.SIGTERM)

    thread = threading.Thread(target=kill_then_sigterm)
    thread.start()
    started = time.monotonic()
    assert stack.run_until_stopped(poll_s=0.1) == 0
    thread.join()
    assert time.monotonic() - started < 30
    time.sleep(1.5)  # past the backoff: still nothing restarted
    stack.supervise_once()
    assert stack.pid("validator") is None
    assert stack.restarts["validator"] == 0
    pids = stack.pids()
    stack.stop()
    assert [pid for pid in pids if alive(pid)] == []
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored


STUBBORN = (
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(600)"
)


def stubborn_worker(stack: Stack) -> int:
    """A worker that ignores SIGTERM (one stuck in a job), among the stack's workers."""
    child = stack._spawn("stubborn", [sys.executable, "-c", STUBBORN])
    stack._workers.append(child)
    assert child.log is not None
    wait_for(lambda: "ready" in child.tail(), 60, "the stubborn worker to ignore SIGTERM")
    return child.proc.pid


def test_stop_waits_stop_timeout_then_kills_a_worker_that_stays(stack: Stack) -> None:
    pid = stubborn_worker(stack)
    stack.stop_timeout = 2.0
    started = time.monotonic()
    stack.stop()
    took = time.monotonic() - started
    assert not alive(pid)
    assert 2.0 + 5.0 <= took < 40  # stop_timeout, then 5 s after the second SIGTERM, then SIGKILL


def test_a_second_signal_while_stopping_kills_at_once(stack: Stack) -> None:
    pid = stubborn_worker(stack)
    stack.stop_timeout = 120.0

    def sigterm_while_stopping() -> None:
        wait_for(lambda: signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL, 30, "stop() to handle SIGTERM")
        time.sleep(0.5)
        os.kill(os.getpid(), signal.SIGTERM)

    thread = threading.Thread(target=sigterm_while_stopping)
    thread.start()
    started = time.monotonic()
    stack.stop()
    thread.join()
    assert time.monotonic() - started < 30
    assert not alive(pid)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


# --------------------------------------------------------------------------- start


def test_a_busy_port_fails_before_anything_starts(tmp_path: Path, clean_env: None) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        stack = Stack(tmp_path / "data", port=port)
        with pytest.raises(StackError, match=f"^port {port} on 127.0.0.1 is already in use"):
            stack.start()
    assert stack.pids() == []
    assert not (tmp_path / "data" / "redis").exists()


def test_start_fails_fast_when_the_api_exits(tmp_path: Path, clean_env: None) -> None:
    # A setting only the API reads (the API and the workers share every FTJOBS_* one): uvicorn's own log config,
    # not JSON. uvicorn exits 1, the workers would run on.
    log_config = tmp_path / "log.json"
    log_config.write_text("not json")
    stack = Stack(
        tmp_path / "data", port=None, env={"UVICORN_LOG_CONFIG": str(log_config)}, log_dir=tmp_path / "logs"
    )
    started = time.monotonic()
    stack.ready_timeout = 600
    with pytest.raises(StackError, match="^api exited with code 1") as raised:
        stack.start()
    assert time.monotonic() - started < 120
    assert "JSONDecodeError" in str(raised.value)  # the tail of its log says why
    assert stack.pids() == []
    assert redis_servers_in(tmp_path / "data") == []


# --------------------------------------------------------------------------- `ftjobs up`


def _parts(pid: int) -> dict[str, tuple[int, str]]:
    """The live children of `ftjobs up` by kind (redis, api, worker, validator, webhooks): (pid, command line)."""
    out = subprocess.run(["ps", "-ww", "-o", "pid=,stat=,args=", "--ppid", str(pid)], capture_output=True, text=True)
    parts = {}
    for line in out.stdout.splitlines():
        child, stat, args = line.split(None, 2)
        if stat.startswith("Z"):  # killed, not reaped yet
            continue
        kind = (
            "redis" if "redis-server" in args
            else "api" if "uvicorn" in args
            else "validator" if "--validate-only" in args
            else "worker" if "ftjobs.jobs.worker" in args
            else "webhooks" if "ftjobs.launch.webhooks" in args
            else args
        )  # fmt: skip
        parts[kind] = (int(child), args)
    return parts


def test_ftjobs_up_restarts_a_worker_the_api_and_redis(tmp_path: Path) -> None:
    port = free_port()
    api = f"http://127.0.0.1:{port}"
    err = tmp_path / "stderr.txt"
    with open(err, "w") as err_fh:
        proc = launch_up(tmp_path / "data", port, stderr=err_fh)
    seen: set[int] = set()

    def replaced(kind: str, old: int) -> int:
        def check() -> int:
            parts = _parts(proc.pid)
            new = parts[kind][0] if kind in parts else 0
            return new if new != old else 0

        new = wait_for(check, 120, f"a new {kind} process")
        seen.add(new)
        return new

    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == api
        parts = _parts(proc.pid)
        seen |= {pid for pid, _ in parts.values()}
        assert set(parts) == {"redis", "api", "worker", "validator", "webhooks"}, parts
        upload = httpx.post(f"{api}/v1/files", files={"file": ("train.jsonl", JSONL, "application/jsonl")}, timeout=60)
        assert upload.status_code in (200, 201), upload.text
        file_id = upload.json()["id"]
        written = time.monotonic()

        os.kill(parts["worker"][0], signal.SIGKILL)
        replaced("worker", parts["worker"][0])
        wait_for(
            lambda: "ftjobs: worker-1 exited with code -9; restarting in 1 s (restart 1)" in err.read_text(),
            30,
            "the worker's restart line",
        )

        os.kill(parts["api"][0], signal.SIGKILL)
        replaced("api", parts["api"][0])
        wait_for(lambda: ready(api), 120, "/readyz 200 from the new API")
        assert "ftjobs: api exited with code -9; restarting in 1 s (restart 1)" in err.read_text()

        time.sleep(max(0.0, written + 1.5 - time.monotonic()))  # AOF everysec: the upload is on disk
        os.kill(parts["redis"][0], signal.SIGKILL)
        new_redis = replaced("redis", parts["redis"][0])
        assert _parts(proc.pid)["redis"][1] == parts["redis"][1]  # `redis-server 127.0.0.1:PORT`: same port
        wait_for(lambda: ready(api), 120, "/readyz 200 with the new Redis")
        assert "ftjobs: redis exited with code -9; restarting in 1 s (restart 1)" in err.read_text()
        listed = httpx.get(f"{api}/v1/files", timeout=30)
        assert listed.status_code == 200, listed.text
        assert file_id in [f["id"] for f in listed.json()["data"]]  # the AOF brought it back

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(120) == 0
        wait_for(lambda: not any(alive(pid) for pid in seen), 10, "every process gone")
        assert not alive(new_redis)
        assert redis_servers_in(tmp_path / "data") == []
    finally:  # on a failed assertion: leave nothing running (each part has a session of its own)
        seen |= {pid for pid, _ in _parts(proc.pid).values()}  # before they lose their parent
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        for pid in seen:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


# --------------------------------------------------------------------------- with a job in flight


def test_a_running_job_survives_a_redis_sigkill_and_a_worker_sigkill(
    tmp_path: Path, clean_env: None, tiny_causal_lm: Path
) -> None:
    from ftjobs.client import Client

    env = {
        "FTJOBS_MODEL_ROOTS": str(tiny_causal_lm.parent),
        "FTJOBS_HEARTBEAT_S": "1",
        "FTJOBS_STALE_AFTER_S": "6",
        "FTJOBS_CHECKPOINT_STEPS": "10",
    }
    rows = b"".join(b'{"prompt": "count to %d :", "completion": " %d"}\n' % (n, n + 1) for n in range(16))
    with Stack(tmp_path / "data", port=None, workers=1, log_dir=tmp_path / "logs", env=env) as stack:
        with Client(stack.url, max_retries=10) as ftjobs:
            path = tmp_path / "train.jsonl"
            path.write_bytes(rows)
            job = ftjobs.jobs.create(
                model=str(tiny_causal_lm),
                training_file=ftjobs.files.upload(path).id,
                method={"type": "lora", "r": 4, "alpha": 8},
                hyperparameters={"max_steps": 120, "batch_size": 1, "max_seq_length": 32},
            )

            def at_step(n: int) -> Callable[[], bool]:
                return lambda: ftjobs.jobs.get(job.id).progress.step >= n

            supervise_until(stack, at_step(15), 300, "the job trains")
            os.kill(stack.pid("redis") or 0, signal.SIGKILL)  # mid-training: every connection drops
            supervise_until(stack, lambda: stack.restarts.get("redis") == 1 and ready(stack.url), 120, "redis back")
            step = ftjobs.jobs.get(job.id).progress.step
            supervise_until(stack, at_step(step + 10), 300, "the job trains on after the Redis restart")
            os.kill(stack.pid("worker-1") or 0, signal.SIGKILL)  # the worker and (PR_SET_PDEATHSIG) its horse
            done = supervise_until(
                stack, lambda: (j := ftjobs.jobs.get(job.id)).status.is_terminal and j, 600, "the job ends"
            )
            assert stack.restarts["worker-1"] == 1
            points = ftjobs.jobs.all_metrics(job.id)
    assert done.status == "succeeded", done.error
    assert done.progress.step == 120
    assert done.attempt == 2  # the worker's SIGKILL cost one attempt; the Redis restart none
    assert done.results["resumed_from_step"] >= 10
    train = [p.step for p in points if p.split == "train"]
    assert train == sorted(set(train)) and train[-1] == 120
