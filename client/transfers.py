"""Uploads and downloads as a person sees them: a progress bar per file, and the local file's sha256.

`Progress` is what `files.upload` and `jobs.download`/`download_all` call as bytes move: (file name, bytes so far,
total bytes or None). `transfer_bars` picks how the CLI shows it, on stderr so stdout stays the command's output:
rich's bars on a terminal where rich is installed, one redrawn line on a terminal without it, nothing elsewhere.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import PurePosixPath
from typing import IO, Any, Protocol, TextIO

Progress = Callable[[str, int, "int | None"], None]  # (name, bytes so far, total bytes or None)
CHUNK = 1024 * 1024


def file_sha256(path: str | os.PathLike[str]) -> str:
    """sha256 (hex) of a local file, read a chunk at a time."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def relative_to_prefix(name: str, prefix: str | None) -> PurePosixPath:
    """Where `download_all(prefix=...)` puts an artifact under its folder: the name without the prefix's folder.

    `adapter/` (or `adapter`, when it names a folder) -> `adapter/model.safetensors` lands as `model.safetensors`;
    `tensorboard/events` -> `tensorboard/events.out.x` lands as `events.out.x`; no prefix keeps the whole name.
    """
    if not prefix:
        return PurePosixPath(name)
    if name.startswith(prefix.rstrip("/") + "/"):
        cut = len(prefix.rstrip("/")) + 1
    else:
        cut = prefix.rfind("/") + 1
    return PurePosixPath(name[cut:] or PurePosixPath(name).name)


class CountingReader:
    """A binary file that reports the bytes read from it: what httpx streams an upload from."""

    def __init__(self, fh: IO[bytes], name: str, total: int | None, progress: Progress) -> None:
        self.fh, self.name, self.total, self.progress = fh, name, total, progress

    def read(self, size: int = -1) -> bytes:
        chunk = self.fh.read(size)
        self.progress(self.name, self.fh.tell(), self.total)
        return chunk

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.fh.seek(offset, whence)

    def tell(self) -> int:
        return self.fh.tell()

    def fileno(self) -> int:  # httpx sizes the part from it (Content-Length instead of chunked)
        return self.fh.fileno()


def total_size(fh: IO[bytes]) -> int | None:
    try:
        return os.fstat(fh.fileno()).st_size
    except (AttributeError, OSError, ValueError):
        return None


# --------------------------------------------------------------------------- views


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


class Bars(Protocol):
    def __call__(self, name: str, done: int, total: int | None) -> None: ...

    def close(self) -> None: ...


class LineBars:
    """A terminal without rich: one line redrawn in place, `adapter_model.safetensors  12.3/40.0 MB  31%`."""

    def __init__(self, out: TextIO, verb: str) -> None:
        self.out, self.verb, self._name = out, verb, ""

    def __call__(self, name: str, done: int, total: int | None) -> None:
        if self._name and name != self._name:
            self.out.write("\n")  # the finished file keeps its line
        self._name = name
        size = f"{_mb(done)}/{_mb(total)}  {done / total:4.0%}" if total else _mb(done)
        self.out.write(f"\r\x1b[2K{self.verb} {name}  {size}")
        self.out.flush()

    def close(self) -> None:
        if self._name:
            self.out.write("\n")
            self.out.flush()


class RichBars:
    """A terminal with rich: a bar per file with bytes, speed and time left."""

    def __init__(self, out: TextIO, verb: str) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self.progress = Progress(
            TextColumn(f"{verb} {{task.description}}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=Console(file=out),
        )
        self.tasks: dict[str, Any] = {}
        self.progress.start()

    def __call__(self, name: str, done: int, total: int | None) -> None:
        if name not in self.tasks:
            self.tasks[name] = self.progress.add_task(name, total=total)
        self.progress.update(self.tasks[name], completed=done, total=total)

    def close(self) -> None:
        self.progress.stop()


def transfer_bars(out: TextIO, verb: str, *, rich: bool = True) -> Bars | None:
    """The bars for `out` (stderr in the CLI), or None where it is not a terminal: then nothing is drawn."""
    try:
        if not out.isatty():
            return None
    except (AttributeError, ValueError):
        return None
    if rich:
        try:
            return RichBars(out, verb)
        except ImportError:
            pass
    return LineBars(out, verb)
