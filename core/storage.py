"""The artifact/dataset store behind an fsspec URL (file:// by default, s3:// at scale), for the API and the worker.

Paths are the ones of `core/keys.py`, relative to the storage root. One atomic-write scheme: data goes to a
temporary sibling `<path>.tmp-<16 hex>` and is renamed into place only once complete, so no reader sees half a
file (an object store's put is whole by nature, so an upload there goes straight to its name). A process
killed mid-write leaves its temporary file behind; `sweep_temp` deletes the stale ones.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from ftjobs.core.keys import checkpoints_dir

log = logging.getLogger("ftjobs.storage")

CHUNK_BYTES = 1024 * 1024
TMP_NAME = re.compile(r"\.tmp-[0-9a-f]{16}$")  # the temporary siblings of `temp_name` (token_hex(8))


def temp_name(full: str) -> str:
    """A fresh temporary sibling of the full path `full`: what the atomic writes write before the rename."""
    return f"{full}.tmp-{secrets.token_hex(8)}"


class Storage:
    """Files under one root URL, laid out by `core/keys.py` (file_path, artifact_path ...)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.fs: Any
        self.fs, root = fsspec.core.url_to_fs(url)
        self.root = str(root).rstrip("/")
        self.is_local = isinstance(self.fs, LocalFileSystem)

    def path(self, rel: str) -> str:
        """The full path (as the filesystem names it) of `rel`."""
        return f"{self.root}/{rel.lstrip('/')}"

    # ------------------------------------------------------------------ reads

    def exists(self, rel: str) -> bool:
        return bool(self.fs.exists(self.path(rel)))

    def size(self, rel: str) -> int:
        return int(self.fs.size(self.path(rel)))

    def open(self, rel: str) -> IO[bytes]:
        """Open for reading; raises FileNotFoundError when absent."""
        return self.fs.open(self.path(rel), "rb")  # type: ignore[no-any-return]

    def iter_bytes(self, handle: IO[bytes], chunk_bytes: int = CHUNK_BYTES) -> Iterator[bytes]:
        """Stream an opened file chunk by chunk, closing it at the end (or when the client goes away)."""
        try:
            while chunk := handle.read(chunk_bytes):
                yield chunk
        finally:
            handle.close()

    def names(self, rel: str) -> list[str]:
        """Names of the entries directly under folder `rel` (none when it does not exist)."""
        full = self.path(rel)
        if not self.fs.exists(full):
            return []
        return sorted(str(p).rstrip("/").rsplit("/", 1)[-1] for p in self.fs.ls(full, detail=False))

    def download(self, rel: str, local: Path) -> Path:
        local.parent.mkdir(parents=True, exist_ok=True)
        self.fs.get_file(self.path(rel), str(local))
        return local

    # ------------------------------------------------------------------ writes (all atomic)

    def writer(self, rel: str) -> AtomicWriter:
        """An atomic writer for `rel`: `write()` chunks, then `commit()`; `abort()` leaves nothing."""
        return AtomicWriter(self, rel)

    def write_bytes(self, rel: str, data: bytes) -> None:
        """Write a small document whole: it appears complete or not at all."""
        writer = self.writer(rel)
        try:
            writer.write(data)
            writer.commit()
        finally:
            writer.abort()  # no-op after the commit

    def write_json(self, rel: str, value: Any) -> None:
        """A JSON document (indented, sorted keys), written whole."""
        self.write_bytes(rel, json.dumps(value, indent=2, sort_keys=True).encode())

    def upload(self, local: Path, rel: str) -> None:
        """Copy a local file to `rel`; on a local store through a temporary sibling, so it appears whole."""
        final = self.path(rel)
        if not self.is_local:  # an object appears whole or not at all: no rename (a copy there) needed
            self.fs.put_file(str(local), final)
            return
        self.make_parent(rel)
        tmp = temp_name(final)
        try:
            self.fs.put_file(str(local), tmp)
            self.fs.mv(tmp, final)
        except BaseException:
            if self.fs.exists(tmp):
                self.fs.rm(tmp)
            raise

    def move(self, src: str, dst: str) -> None:
        """Move one file; on a local filesystem this is a rename, so readers never see half a file."""
        self.make_parent(dst)
        self.fs.mv(self.path(src), self.path(dst))

    def delete(self, rel: str) -> None:
        """Delete a file, or a folder with everything in it; nothing when absent."""
        full = self.path(rel)
        if self.fs.exists(full):
            self.fs.rm(full, recursive=True)

    def make_parent(self, rel: str) -> None:
        """Create the folder `rel` goes into (object stores have no folders to make)."""
        if self.is_local:
            self.fs.makedirs(self.path(rel).rsplit("/", 1)[0], exist_ok=True)

    # ------------------------------------------------------------------ leftovers

    def sweep_temp(self, max_age_s: float) -> list[str]:
        """Delete temporaries of the atomic writes not modified for `max_age_s` seconds; returns their full paths.

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

    def __init__(self, storage: Storage, rel: str) -> None:
        self.storage = storage
        self.final = storage.path(rel)
        self.tmp = temp_name(self.final)
        storage.make_parent(rel)
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


def remove_checkpoints(storage: Storage, tenant: str, job_id: str) -> None:
    """Delete a finished job's resumable checkpoints; a store error is logged, not raised (the job is done)."""
    try:
        storage.delete(checkpoints_dir(tenant, job_id))
    except Exception:
        log.exception("could not delete the checkpoints of %s", job_id)
