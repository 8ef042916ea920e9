"""The artifact/dataset store behind an fsspec URL (file:// by default, s3:// at scale).

Paths are the ones of `core/keys.py`, relative to the storage root. Writes are atomic: data goes to
`<path>.tmp-<random>` and is moved into place only once complete, so no reader sees half a file. A
process killed mid-write leaves its temporary file behind; `sweep_temp` deletes the stale ones.
"""

from __future__ import annotations

import os
import re
import secrets
import time
from collections.abc import Iterator
from typing import IO, Any

import fsspec

CHUNK_BYTES = 1024 * 1024
TMP_NAME = re.compile(r"\.tmp-[0-9a-f]{16}$")  # AtomicWriter's temporary siblings (token_hex(8))


class Storage:
    def __init__(self, url: str) -> None:
        self.url = url
        self.fs: Any
        self.fs, root = fsspec.core.url_to_fs(url)
        self.root = str(root).rstrip("/")

    def full_path(self, path: str) -> str:
        return f"{self.root}/{path.lstrip('/')}"

    def writer(self, path: str) -> AtomicWriter:
        """An atomic writer for `path`: `write()` chunks, then `commit()`; `abort()` leaves nothing."""
        return AtomicWriter(self, path)

    def write_bytes(self, path: str, data: bytes) -> None:
        """Write a small document whole (through the atomic writer): it appears complete or not at all."""
        writer = self.writer(path)
        try:
            writer.write(data)
            writer.commit()
        finally:
            writer.abort()  # no-op after the commit

    def exists(self, path: str) -> bool:
        return bool(self.fs.exists(self.full_path(path)))

    def size(self, path: str) -> int:
        return int(self.fs.size(self.full_path(path)))

    def open(self, path: str) -> IO[bytes]:
        """Open for reading; raises FileNotFoundError when absent."""
        return self.fs.open(self.full_path(path), "rb")  # type: ignore[no-any-return]

    def iter_bytes(self, handle: IO[bytes], chunk_bytes: int = CHUNK_BYTES) -> Iterator[bytes]:
        """Stream an opened file chunk by chunk, closing it at the end (or when the client goes away)."""
        try:
            while chunk := handle.read(chunk_bytes):
                yield chunk
        finally:
            handle.close()

    def names(self, path: str) -> list[str]:
        """Names of the entries directly under folder `path` (none when it does not exist)."""
        full = self.full_path(path)
        if not self.fs.exists(full):
            return []
        return sorted(str(p).rstrip("/").rsplit("/", 1)[-1] for p in self.fs.ls(full, detail=False))

    def delete(self, path: str) -> None:
        full = self.full_path(path)
        if self.fs.exists(full):
            self.fs.rm(full)

    def sweep_temp(self, max_age_s: float) -> list[str]:
        """Delete AtomicWriter temporaries not modified for `max_age_s` seconds; returns their full paths.

        A writer still in use keeps its file's modification time fresh, so only a dead one's file goes.
        The whole store is listed: a local walk is cheap, and an object store rarely holds any (an
        unfinished object upload is no object), so this runs only every few minutes.
        """
        if not self.fs.exists(self.root):
            return []
        cutoff = time.time() - max_age_s
        removed = []
        for full in self.fs.find(self.root):
            if not TMP_NAME.search(str(full)):
                continue
            try:
                if self.fs.modified(full).timestamp() > cutoff:
                    continue
                self.fs.rm(full)
            except NotImplementedError:  # a store without modification times: age unknown, keep it
                continue
            except FileNotFoundError:  # committed or aborted meanwhile
                continue
            removed.append(str(full))
        return removed


class AtomicWriter:
    """Writes to a temporary sibling and renames it into place on commit."""

    def __init__(self, storage: Storage, path: str) -> None:
        self.storage = storage
        self.final = storage.full_path(path)
        self.tmp = f"{self.final}.tmp-{secrets.token_hex(8)}"
        parent = self.final.rsplit("/", 1)[0]
        storage.fs.makedirs(parent, exist_ok=True)
        self._fh: IO[bytes] | None = storage.fs.open(self.tmp, "wb")

    def write(self, data: bytes) -> None:
        assert self._fh is not None, "writer already closed"
        self._fh.write(data)

    def commit(self) -> None:
        assert self._fh is not None, "writer already closed"
        self._fh.close()
        self._fh = None
        self.storage.fs.mv(self.tmp, self.final)

    def abort(self) -> None:
        """Drop the temporary file (safe to call more than once, or after commit)."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None
            try:
                self.storage.fs.rm(self.tmp)
            except FileNotFoundError:
                pass


def sweep_folder(folder: str, max_age_s: float) -> list[str]:
    """Delete the files directly in local `folder` not modified for `max_age_s` seconds; returns their paths."""
    cutoff = time.time() - max_age_s
    removed = []
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return []
    for entry in entries:
        try:
            if not entry.is_file(follow_symlinks=False) or entry.stat().st_mtime > cutoff:
                continue
            os.unlink(entry.path)
        except FileNotFoundError:  # its upload finished (and removed it) meanwhile
            continue
        removed.append(entry.path)
    return removed
