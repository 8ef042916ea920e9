"""A followed job as the CLI shows it live: its event lines, and a progress line (step/total, loss, ETA) kept at the
bottom of a terminal.

Three views, picked by `live_view`: on a terminal, rich's progress bar when rich is installed, else one line
redrawn in place; anywhere else (a pipe, a file, CI logs) only the event lines, with no escape codes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Protocol, TextIO

from ftjobs.client.models import Event, EventType, Job


def duration(seconds: float | None) -> str:
    """`75.2` -> `1m15s`; `None` -> `?`."""
    if seconds is None:
        return "?"
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


@dataclass
class Tracker:
    """What the progress line shows, from the events (step, loss, status) and the job record (total, ETA)."""

    status: str = ""
    step: int = 0
    total: int | None = None
    loss: float | None = None
    eta_seconds: float | None = None
    _refreshed: float = 0.0

    def see(self, event: Event) -> None:
        data = event.data
        if event.type is EventType.status and isinstance(data.get("status"), str):
            self.status = data["status"]
        if event.type is EventType.metrics and data.get("split", "train") == "train":
            if isinstance(data.get("step"), int):
                self.step = data["step"]
            nested = data.get("values")
            values: dict[str, Any] = nested if isinstance(nested, dict) else data
            if isinstance(values.get("loss"), int | float):
                self.loss = float(values["loss"])

    def wants_job(self, event: Event, every_s: float = 2.0) -> bool:
        """Whether to read the job again now: at each status change, and for train steps at most every `every_s`."""
        if event.type is EventType.status:
            return True
        return event.type is EventType.metrics and time.monotonic() - self._refreshed >= every_s

    def update(self, job: Job) -> None:
        self._refreshed = time.monotonic()
        self.status = job.status.value
        self.step = max(self.step, job.progress.step)
        self.total = job.progress.total_steps or self.total
        self.eta_seconds = None if job.status.is_terminal else job.progress.eta_seconds

    def line(self, width: int = 24) -> str:
        """`[#########---------------] 45/113 steps  loss 0.672  ETA 32s  running`."""
        if self.total:
            done = min(1.0, self.step / self.total)
            filled = round(done * width)
            head = f"[{'#' * filled}{'-' * (width - filled)}] {self.step}/{self.total} steps"
        else:
            head = f"step {self.step}"
        loss = f"  loss {self.loss:.4g}" if self.loss is not None else ""
        eta = f"  ETA {duration(self.eta_seconds)}" if self.eta_seconds is not None else ""
        return f"{head}{loss}{eta}  {self.status}".rstrip()


class View(Protocol):
    def show(self, line: str | None, tracker: Tracker) -> None:
        """Print `line` (an event, or None) and bring the progress line up to date."""

    def close(self) -> None: ...


class PlainView:
    """Not a terminal: each event line once, as it comes; nothing redrawn, no escape codes."""

    def __init__(self, out: TextIO) -> None:
        self.out = out

    def show(self, line: str | None, tracker: Tracker) -> None:
        if line is not None:
            print(line, file=self.out, flush=True)

    def close(self) -> None:
        pass


class LineView:
    """A terminal without rich: the event lines scroll, one progress line is redrawn under them."""

    def __init__(self, out: TextIO) -> None:
        self.out, self._drawn = out, False

    def show(self, line: str | None, tracker: Tracker) -> None:
        clear = "\r\x1b[2K" if self._drawn else ""
        above = f"{line}\n" if line is not None else ""
        self.out.write(f"{clear}{above}{tracker.line()}")
        self.out.flush()
        self._drawn = True

    def close(self) -> None:
        if self._drawn:
            self.out.write("\n")
            self.out.flush()


class RichView:
    """A terminal with rich: its progress bar (steps, loss, ETA as the server estimates it) under the event lines."""

    def __init__(self, out: TextIO) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        self.progress = Progress(
            TextColumn("{task.fields[status]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("steps  {task.fields[loss]}  {task.fields[eta]}"),
            console=Console(file=out),
        )
        self.task = self.progress.add_task("job", total=None, status="", loss="", eta="")
        self.progress.start()

    def show(self, line: str | None, tracker: Tracker) -> None:
        if line is not None:
            self.progress.console.print(line, markup=False, highlight=False)
        self.progress.update(
            self.task,
            completed=tracker.step,
            total=tracker.total,
            status=tracker.status,
            loss=f"loss {tracker.loss:.4g}" if tracker.loss is not None else "",
            eta=f"ETA {duration(tracker.eta_seconds)}" if tracker.eta_seconds is not None else "",
        )

    def close(self) -> None:
        self.progress.stop()


def live_view(out: TextIO, *, rich: bool = True) -> View:
    """The view for `out`: plain lines unless it is a terminal; rich's bar there when installed (and wanted)."""
    if not _isatty(out):
        return PlainView(out)
    if rich:
        try:
            return RichView(out)
        except ImportError:
            pass
    return LineView(out)


def _isatty(out: Any) -> bool:
    try:
        return bool(out.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed file
        return False
