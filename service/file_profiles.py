"""Stored dataset profiles: saved at upload, computed on first request for files uploaded before profiles
existed (by streaming the dataset through the upload's reader), with the token statistics and label issues jobs
wrote."""

from __future__ import annotations

from ftjobs.client.models import FileObject, FileProfile, LabelIssues, TokenStats
from ftjobs.core.keys import file_label_issues_path, file_path, file_profile_path, file_tokens_dir
from ftjobs.core.storage import Storage
from ftjobs.service.readers import JsonlReader

STORED_ROW_BYTES = 16 * 1024 * 1024  # the line limit before FTJOBS_MAX_ROW_BYTES: what an older file may hold


def save_profile(storage: Storage, file: FileObject, profile: FileProfile) -> None:
    storage.write_bytes(file_profile_path(file.tenant, file.id), profile.model_dump_json().encode())


def load_profile(storage: Storage, file: FileObject) -> FileProfile:
    """The stored profile, or (older files) one computed now by streaming the dataset, then stored;
    with the token statistics jobs' validations wrote next to the file."""
    profile = _stored_profile(storage, file)
    profile.tokens = token_stats(storage, file)
    profile.label_issues = label_issues(storage, file)
    return profile


def label_issues(storage: Storage, file: FileObject) -> LabelIssues | None:
    """`<file>.label_issues.json`, written by the first classification job's validation (None: none yet)."""
    path = file_label_issues_path(file.tenant, file.id)
    try:
        with storage.open(path) as fh:
            return LabelIssues.model_validate_json(fh.read())
    except (OSError, ValueError):  # not written yet (or unreadable): the profile goes without
        return None


def token_stats(storage: Storage, file: FileObject) -> list[TokenStats]:
    """`<file>.tokens/<job_id>.json`, newest job first (unreadable ones are skipped)."""
    folder = file_tokens_dir(file.tenant, file.id)
    out = []
    for name in sorted((n for n in storage.names(folder) if n.endswith(".json")), reverse=True):
        try:
            with storage.open(f"{folder}/{name}") as fh:
                out.append(TokenStats.model_validate_json(fh.read()))
        except (OSError, ValueError):
            continue
    return out


def _stored_profile(storage: Storage, file: FileObject) -> FileProfile:
    path = file_profile_path(file.tenant, file.id)
    if storage.exists(path):
        with storage.open(path) as fh:
            return FileProfile.model_validate_json(fh.read())
    reader = JsonlReader(max_bytes=2**62, max_row_bytes=STORED_ROW_BYTES)
    for chunk in storage.iter_bytes(storage.open(file_path(file.tenant, file.id))):
        reader.feed(chunk)
    reader.finish(file.filename)
    profile = reader.rows.profile.build(file.id)
    save_profile(storage, file, profile)
    return profile
