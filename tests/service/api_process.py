"""The API as a real process (`uvicorn --factory ftjobs.service.main:app_from_env`), with its memory measured.

Peak memory is the kernel's high-water mark (VmHWM in /proc/<pid>/status), reset before each measurement by
writing 5 to /proc/<pid>/clear_refs: no sampling can miss a short spike. /healthz is probed meanwhile from a
thread, so a test sees how long the API keeps a health check waiting while it reads an upload.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from ftjobs.launch.embedded import free_port
from tests.conftest import REPO

MB = 1024 * 1024


def _status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


@dataclass
class Measurement:
    """One request's effect on the API process: memory before, at peak and after, /healthz latencies."""

    baseline: int = 0  # bytes (VmRSS) before the request
    peak: int = 0  # bytes (VmHWM) while it ran
    after: int = 0  # bytes (VmRSS) once it answered
    health_s: list[float] = field(default_factory=list)

    @property
    def extra(self) -> int:
        return self.peak - self.baseline

    @property
    def slowest_health_s(self) -> float:
        return max(self.health_s, default=0.0)

    def __str__(self) -> str:
        return (
            f"baseline {self.baseline / MB:.0f} MB, peak {self.peak / MB:.0f} MB (+{self.extra / MB:.0f} MB), "
            f"after {self.after / MB:.0f} MB; /healthz slowest {self.slowest_health_s * 1000:.0f} ms "
            f"of {len(self.health_s)} probes"
        )


@dataclass
class ApiProcess:
    proc: subprocess.Popen[bytes]
    url: str
    log: Path

    def rss(self) -> int:
        return _status_kb(self.proc.pid, "VmRSS") * 1024

    def peak(self) -> int:
        return _status_kb(self.proc.pid, "VmHWM") * 1024

    def reset_peak(self) -> None:
        Path(f"/proc/{self.proc.pid}/clear_refs").write_text("5")  # VmHWM := VmRSS

    @contextmanager
    def measure(self, probe_every_s: float = 0.05) -> Iterator[Measurement]:
        """Measure the memory and /healthz latency of what runs inside the block."""
        m = Measurement(baseline=self.rss())
        self.reset_peak()
        done = threading.Event()

        def probe() -> None:
            with httpx.Client(base_url=self.url, timeout=60) as http:
                while not done.is_set():
                    started = time.monotonic()
                    assert http.get("/healthz").status_code == 200
                    m.health_s.append(time.monotonic() - started)
                    done.wait(probe_every_s)

        prober = threading.Thread(target=probe, daemon=True)
        prober.start()
        deadline = time.monotonic() + 30
        while not m.health_s and prober.is_alive() and time.monotonic() < deadline:  # probing before the block
            time.sleep(0.01)
        try:
            yield m
        finally:
            done.set()
            prober.join(60)
            m.peak = max(self.peak(), m.baseline)
            m.after = self.rss()


@contextmanager
def api_process(env: dict[str, str], log: Path, **extra: str) -> Iterator[ApiProcess]:
    """The API on a free port with `env` (FTJOBS_* on the test Redis); stopped on exit."""
    port = free_port()
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [
                sys.executable, "-m", "uvicorn", "--factory", "ftjobs.service.main:app_from_env",
                "--port", str(port), "--no-access-log",
            ],
            cwd=REPO,
            env={**os.environ, **env, **extra, "PYTHONUNBUFFERED": "1"},
            stdout=out,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    api = ApiProcess(proc, f"http://127.0.0.1:{port}", log)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, log.read_text(errors="replace")
            try:
                if httpx.get(f"{api.url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the API did not start:\n" + log.read_text(errors="replace")
            time.sleep(0.1)
        yield api
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
