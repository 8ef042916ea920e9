"""The artifact/dataset store behind an fsspec URL (file:// by default, s3:// at scale).

Paths are the ones of `client/keys.py`, relative to the storage root. Writes are atomic: data goes to
`<path>.tmp-<random>` and is moved into place only once complete, so no reader sees half a file.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import IO, Any

import fsspec

CHUNK_BYTES = 1024 * 1024


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
