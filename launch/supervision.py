"""The child processes of `ftjobs up`, one at a time: start, signal, kill, and when to restart one that died.

A child runs in a session (and process group) of its own, so a terminal's Ctrl-C reaches only `ftjobs up`,
which stops the children in order (launch/stack.py). Linux also sends it SIGTERM if `ftjobs up` dies without
stopping it. A child that died is restarted with exponential backoff: 1 s, 2 s, 4 s ... 30 s, back to 1 s once
it stayed up 60 s.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

RESTART_FIRST_S = 1.0  # the first restart of a part that died waits this long, each quick next one twice as long
RESTART_MAX_S = 30.0
STABLE_AFTER_S = 60.0  # a part that stayed up this long starts over at RESTART_FIRST_S when it dies


@dataclass
class Child:
    name: str
    argv: list[str]
    proc: subprocess.Popen[bytes]
    log: Path | None
    log_fh: IO[bytes] | None
    started: float = field(default_factory=time.monotonic)

    def tail(self, chars: int = 3000) -> str:
        if self.log is None or not self.log.is_file():
            return ""
        return self.log.read_text(errors="replace")[-chars:]


@dataclass
class Backoff:
    streak: int = 0  # restarts in a row without a stable run: the next one waits 2**streak s (capped)
    due: float | None = None  # time.monotonic() of the pending restart; None: none pending


def restart_delay(streak: int, first: float = RESTART_FIRST_S, cap: float = RESTART_MAX_S) -> float:
    """Seconds before a restart after `streak` quick ones in a row: 1, 2, 4 ... capped at 30."""
    return min(first * 2 ** min(streak, 30), cap)


def spawn(name: str, argv: list[str], *, cwd: Path, env: Mapping[str, str], log: Path | None) -> Child:
    """Start `argv` in its own session; its output goes to `log` (appended), or to our stderr when None."""
    fh = None
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
        fh = open(log, "ab")  # closed in kill_group; a restart appends to the same log
    # Own session: a terminal's Ctrl-C reaches only us, and we stop the children in order.
    proc = subprocess.Popen(
        argv,
        cwd=cwd,
        env=env,
        stdout=fh if fh else 2,  # no log folder: their output joins our stderr (stdout is for the URL)
        stderr=subprocess.STDOUT if fh else None,
        start_new_session=True,
        preexec_fn=_die_with_parent,
    )
    return Child(name, argv, proc, log, fh)


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def send_signal(child: Child, signum: int) -> None:
    if child.proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            child.proc.send_signal(signum)


def kill_group(child: Child) -> None:
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
