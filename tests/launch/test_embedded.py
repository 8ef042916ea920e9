"""The embedded Redis: loopback only, a random password that no command line shows, kept across a restart."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest
import redis as redis_lib

from ftjobs.launch.embedded import start_redis


def test_a_connection_without_the_password_is_refused(tmp_path: Path) -> None:
    server = start_redis(tmp_path, persist=False)
    try:
        assert redis_lib.Redis.from_url(server.url).ping()
        with pytest.raises(redis_lib.AuthenticationError):
            redis_lib.Redis(host="127.0.0.1", port=server.port).ping()
        with pytest.raises(redis_lib.AuthenticationError):
            redis_lib.Redis(host="127.0.0.1", port=server.port, password="guess").ping()
        ps = subprocess.run(["ps", "-o", "args=", "-p", str(server.process.pid)], capture_output=True, text=True)
        assert ps.stdout.strip() and server.password not in ps.stdout
        assert redis_lib.Redis.from_url(server.url).config_get("bind")["bind"] == "127.0.0.1"
        assert stat.S_IMODE(os.stat(tmp_path / "redis.conf").st_mode) == 0o600
    finally:
        server.stop()


def test_every_start_has_its_own_password_unless_one_is_kept(tmp_path: Path) -> None:
    first = start_redis(tmp_path / "a", persist=False)
    second = start_redis(tmp_path / "b", persist=False)
    first.stop()
    again = start_redis(tmp_path / "a", port=first.port, persist=False, password=first.password)
    try:
        assert first.password != second.password and len(first.password) >= 32
        assert again.url == first.url and redis_lib.Redis.from_url(again.url).ping()
    finally:
        second.stop()
        again.stop()
