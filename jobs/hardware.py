"""A worker's hardware, recorded once at startup for the admin view (`GET /v1/admin/workers`, core/fleet.py).

torch is probed in a child interpreter at low priority, so the worker parent (which forks work horses) never
initialises CUDA or runs a torch op, whether or not it preloaded the job modules.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading

from redis import Redis

from ftjobs.client.models.admin import WorkerHardware
from ftjobs.core.fleet import HARDWARE_TTL_S, hardware_key

log = logging.getLogger("ftjobs.fleet")

PROBE = """
import json, os
os.nice(10)  # at startup, beside the worker's own imports: the CPU is theirs
info = {"cpu_count": os.cpu_count(), "device": "cpu", "gpu_count": 0}
try:
    import torch
    info["torch_version"] = torch.__version__.split("+")[0]
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(device="cuda", gpu_count=torch.cuda.device_count(), gpu_name=props.name,
                    gpu_memory_bytes=int(props.total_memory))
    elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        info["device"] = "mps"
except Exception:
    pass
print(json.dumps(info))
"""


def probe_hardware(timeout_s: float = 120.0) -> WorkerHardware:
    """CPU count, torch device, first GPU's name and memory, found by a child interpreter."""
    try:
        done = subprocess.run(
            [sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=timeout_s, check=True
        )  # no preexec_fn: it is unsafe beside threads, and it keeps the child looking like a work horse for longer
        return WorkerHardware.model_validate_json(done.stdout.strip().splitlines()[-1])
    except Exception as exc:  # no torch, a broken driver: the CPU count is still worth showing
        log.warning("hardware probe failed: %s", exc)
        return WorkerHardware(cpu_count=os.cpu_count(), device="cpu")


def record_hardware(connection: Redis, worker_name: str) -> threading.Thread:
    """Probe and record this worker's hardware in the background (the probe takes seconds: torch's import)."""

    def run() -> None:
        hardware = probe_hardware()
        try:
            connection.set(hardware_key(worker_name), hardware.model_dump_json(), ex=HARDWARE_TTL_S)
        except Exception as exc:
            log.warning("could not record the worker's hardware: %s", exc)

    thread = threading.Thread(target=run, name="hardware-probe", daemon=True)
    thread.start()
    return thread
