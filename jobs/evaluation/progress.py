"""Progress through the phases that are not training steps: evaluations (batches, generated examples) and saving
(bytes uploaded). Without it a job's status said `10/10 ETA 0.0` through a minute of final evaluation.

A `PhaseProgress` writes the job's progress (phase, done/total, the phase's own ETA) at most every
WRITE_EVERY_S, and an event when the phase starts, every EVENT_EVERY_S while it runs, and when it ends, so the
events tell where a long job is ("baseline evaluation: 3/8 batches, ETA 12s").
"""

from __future__ import annotations

import time
from typing import Any, Literal

from ftjobs.client.models import Progress
from ftjobs.core.keys import JobField
from ftjobs.jobs.report import Reporter

WRITE_EVERY_S = 1.0  # progress writes (each also a heartbeat) while a phase runs
EVENT_EVERY_S = 10.0  # events while a phase runs, besides its first and last
Phase = Literal["evaluating", "saving"]


def _amount(done: int, total: int | None, unit: str) -> str:
    """`3/8 batches`, `0.52/1.3 MB`."""
    if unit == "bytes":
        of = f"/{total / 1e6:.3g}" if total else ""
        return f"{done / 1e6:.3g}{of} MB"
    return f"{done}/{total} {unit}" if total else f"{done} {unit}"


def _seconds(value: float) -> str:
    return f"{value:.1f}s" if value < 10 else f"{value:.0f}s"


class PhaseProgress:
    """One phase of `total` units (None: unknown) done in `advance` steps; `finish` when it ends."""

    def __init__(
        self,
        reporter: Reporter,
        phase: Phase,
        label: str,
        unit: str,
        total: int | None,
        base: Progress | None = None,
        started: float | None = None,
    ) -> None:
        """`started`: when the phase began (time.monotonic()), if before this object (the first batch's end)."""
        self.reporter, self.phase, self.label, self.unit, self.total = reporter, phase, label, unit, total
        self.base = base if base is not None else last_progress(reporter)
        self.done = 0
        self.started = started if started is not None else time.monotonic()
        self._last_write = self._last_event = 0.0
        self._announced = False

    def eta(self) -> float | None:
        """The phase's remaining seconds at its pace so far; None until a unit is done or without a total."""
        if not self.total or self.done <= 0:
            return None
        elapsed = time.monotonic() - self.started
        return round(max(0.0, elapsed / self.done * (self.total - self.done)), 3)

    def progress(self) -> Progress:
        return self.base.model_copy(
            update={
                "phase": self.phase,
                "phase_done": self.done,
                "phase_total": self.total,
                "phase_unit": self.unit,
                "eta_seconds": self.eta(),
            }
        )

    def start(self) -> PhaseProgress:
        self._write(force=True)
        return self

    def advance(self, n: int = 1) -> None:
        self.done += n
        self._write()

    def finish(self) -> None:
        seconds = time.monotonic() - self.started
        self.reporter.event(
            f"{self.label}: done, {_amount(self.done, None, self.unit)} in {_seconds(seconds)}",
            data=self._data(seconds_taken=round(seconds, 3), eta_seconds=0.0),
        )
        self.reporter.progress(self.progress().model_copy(update={"eta_seconds": 0.0}))

    def _write(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._last_write >= WRITE_EVERY_S or self.done == self.total:
            self._last_write = now
            self.reporter.progress(self.progress())
        # The last unit's event is `finish`'s ("done, ... in 2.6s"): no "1/1 batches, ETA 0.0s" line before it.
        if self.done != self.total and (not self._announced or now - self._last_event >= EVENT_EVERY_S):
            self._announced, self._last_event = True, now
            eta = self.eta()
            left = f", ETA {_seconds(eta)}" if eta is not None else ""
            self.reporter.event(f"{self.label}: {_amount(self.done, self.total, self.unit)}{left}", data=self._data())

    def _data(self, **extra: Any) -> dict[str, Any]:
        return {
            "phase": self.phase, "label": self.label, "done": self.done, "total": self.total, "unit": self.unit,
            "eta_seconds": self.eta(), **extra,
        }  # fmt: skip


def last_progress(reporter: Reporter) -> Progress:
    """The progress the record holds now (training's numbers), the base a phase adds its own to."""
    value = (reporter.read() or {}).get(JobField.progress)
    try:
        return Progress.model_validate(value or {})
    except ValueError:
        return Progress()
