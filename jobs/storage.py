"""The artifact/dataset store behind an fsspec URL (file:// by default, s3:// at scale), worker side."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from ftjobs.core.keys import checkpoints_dir

log = logging.getLogger("ftjobs.storage")


class Store:
    """Paths are relative to the root URL and laid out by `client.keys` (file_path, artifact_path ...)."""

    def __init__(self, url: str) -> None:
        self.fs, self.root = fsspec.core.url_to_fs(url)
        self.root = self.root.rstrip("/")
        self.is_local = isinstance(self.fs, LocalFileSystem)

    def path(self, rel: str) -> str:
        return f"{self.root}/{rel.lstrip('/')}"

    def exists(self, rel: str) -> bool:
        return bool(self.fs.exists(self.path(rel)))

    def download(self, rel: str, local: Path) -> Path:
        local.parent.mkdir(parents=True, exist_ok=True)
        self.fs.get_file(self.path(rel), str(local))
        return local

    def upload(self, local: Path, rel: str) -> None:
        self._parent(rel)
        self.fs.put_file(str(local), self.path(rel))

    def move(self, src: str, dst: str) -> None:
        """Move one file; on a local filesystem this is a rename, so readers never see half a file."""
        self._parent(dst)
        self.fs.mv(self.path(src), self.path(dst))

    def write_json(self, rel: str, value: Any) -> None:
        """Write through a temporary name then move, so the document appears whole or not at all."""
        self._parent(rel)
        tmp = f"{rel}.tmp"
        with self.fs.open(self.path(tmp), "w") as fh:
            json.dump(value, fh, indent=2, sort_keys=True)
        self.move(tmp, rel)

    def names(self, rel: str) -> list[str]:
        """The names of the entries directly under folder `rel` (none when it does not exist)."""
        if not self.fs.exists(self.path(rel)):
            return []
        return sorted(str(p).rstrip("/").rsplit("/", 1)[-1] for p in self.fs.ls(self.path(rel), detail=False))

    def remove_tree(self, rel: str) -> None:
        if self.fs.exists(self.path(rel)):
            self.fs.rm(self.path(rel), recursive=True)

    def _parent(self, rel: str) -> None:
        if self.is_local:  # object stores have no directories to make
            self.fs.makedirs(self.path(rel).rsplit("/", 1)[0], exist_ok=True)


def remove_checkpoints(store: Store, tenant: str, job_id: str) -> None:
    """Delete a finished job's resumable checkpoints (jobs/checkpoints.py); a store error is logged, not raised."""
    try:
        store.remove_tree(checkpoints_dir(tenant, job_id))
    except Exception:
        log.exception("could not delete the checkpoints of %s", job_id)
