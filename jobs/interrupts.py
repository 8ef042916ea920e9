"""Stopping a work horse on time: preemption (the worker got SIGTERM), pauses, and cancels that cannot wait for a step.

The worker process (jobs/worker.py) sends the horse SIGUSR1 when it must stop: the horse then saves a checkpoint
at the next step end and hands the job back (`Preempted`). A step can take minutes (big batches, long
gradient accumulation), so waiting for its end is not enough: `Interrupter` raises the stop in the main thread
from a signal (SIGUSR2) once a grace period has passed, which lands between two Python-level operations of the
step (the next layer of a forward pass, the next micro-batch), and the job unwinds from there.

A pause (`POST /v1/jobs/{id}/pause`) takes the preemption's path without a signal: the checkpoint callback sees
`pause_requested` on the record, sets `pause`, saves at that step end and raises `Paused`; the job then goes to
`paused` instead of back to its queue. A pause waits for the step end (no forced interrupt: nothing is lost).

Light on purpose (no torch): the worker's parent imports it to install the SIGUSR1 handler in the horse.
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType

log = logging.getLogger("ftjobs.interrupts")

PREEMPT_SIGNAL = signal.SIGUSR1  # worker -> horse: checkpoint and hand the job back
INTERRUPT_SIGNAL = signal.SIGUSR2  # horse's own threads -> its main thread: raise the pending stop now


class Cancelled(Exception):
    """The job was cancelled (or this attempt lost the job); raised where training or evaluation is stopped."""


class Preempted(Exception):
    """The worker is shutting down: the job goes back to its queue (after a checkpoint, where one was possible)."""


class Paused(Preempted):
    """A pause was asked for: the job checkpointed at `checkpoint_step` and waits, `paused`, until it is resumed."""

    def __init__(self, step: int, checkpoint_step: int) -> None:
        super().__init__(f"paused at step {step}")
        self.step, self.checkpoint_step = step, checkpoint_step


class Interrupter:
    """One per work horse: remembers the stop asked for and forces it into the main thread after a grace."""

    def __init__(self) -> None:
        self.preempt = threading.Event()  # set by SIGUSR1: the worker is stopping
        self.pause = threading.Event()  # set at a step end that saw `pause_requested`: checkpoint, then pause
        self.checkpointable = False  # True while a Trainer trains: its next step end saves a checkpoint first
        self.preempt_grace_s = 15.0  # how long a training step may take to end before it is interrupted
        self._pending: type[Exception] | None = None
        self._armed = False  # raising into the main thread is allowed (the job's own code runs)
        self._stopping = False  # the main thread is already on its way out: never raise into it
        self._lock = threading.RLock()  # RLock: the SIGUSR1 handler may run while the main thread holds it
        self._timer: threading.Timer | None = None

    def install(self, preempt_grace_s: float) -> None:
        """In the horse's main thread, before the job: SIGUSR1 = preempt, SIGUSR2 = raise the pending stop here."""
        self.preempt_grace_s = preempt_grace_s
        signal.signal(PREEMPT_SIGNAL, self._on_preempt)
        signal.signal(INTERRUPT_SIGNAL, self._on_interrupt)
        self._armed = True

    def disarm(self) -> None:
        """The job's own code is done (finishing up): no stop is raised into it any more."""
        with self._lock:
            self._armed = False
            if self._timer is not None:
                self._timer.cancel()

    def request(self, stop: type[Exception], grace_s: float) -> None:
        """Ask the main thread to raise `stop`; if it has not stopped by itself within `grace_s`, force it."""
        with self._lock:
            if not self._armed or self._stopping or self._pending is not None:
                return
            self._pending = stop
            self._timer = threading.Timer(max(grace_s, 0.0), self._force)
            self._timer.daemon = True
            self._timer.start()

    def acknowledge(self) -> None:
        """The main thread stops by itself (at a step end, in an evaluation): nothing may be raised into it now."""
        with self._lock:
            self._stopping = True
            if self._timer is not None:
                self._timer.cancel()

    def _force(self) -> None:
        with self._lock:
            if not self._armed or self._stopping or self._pending is None:
                return
        log.warning("the job did not stop within its grace; raising %s in its main thread", self._pending.__name__)
        signal.pthread_kill(threading.main_thread().ident or 0, INTERRUPT_SIGNAL)

    def _on_preempt(self, signum: int, frame: FrameType | None) -> None:
        self.preempt.set()
        if not self.checkpointable:  # loading, evaluating, validating: nothing to save, stop right here
            with self._lock:
                if not self._armed or self._stopping:
                    return
                self._armed = False
            raise Preempted("the worker is stopping")
        self.request(Preempted, self.preempt_grace_s)  # training: the next step end saves, then stops

    def _on_interrupt(self, signum: int, frame: FrameType | None) -> None:
        # Runs in the main thread between two bytecodes; a late signal after disarm() or acknowledge() is ignored.
        with self._lock:
            if not self._armed or self._stopping or self._pending is None:
                return
            self._armed = False
        raise self._pending(f"interrupted: {self._pending.__name__.lower()}")


INTERRUPTER = Interrupter()  # the horse's (one job per horse process)
