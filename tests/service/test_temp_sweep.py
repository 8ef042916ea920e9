"""The API's sweep of stale temporary files: old ones go at startup, fresh ones (live uploads) stay."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pydantic
import pytest

from ftjobs.core.settings import Settings
from ftjobs.core.storage import Storage, sweep_folder

HOUR = 3600


def plant(path: Path, age_s: float = 0) -> Path:
    """A file last modified `age_s` seconds ago."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"partial")
    then = time.time() - age_s
    os.utime(path, (then, then))
    return path


def wait_gone(paths: list[Path], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while any(p.exists() for p in paths):
        assert time.monotonic() < deadline, [str(p) for p in paths if p.exists()]
        time.sleep(0.05)


def test_temp_max_age_comes_from_the_environment(env):  # type: ignore[no-untyped-def]
    assert Settings.from_env(env).temp_max_age_s == HOUR
    assert Settings.from_env({**env, "FTJOBS_TEMP_MAX_AGE_S": "0"}).temp_max_age_s == 0
    with pytest.raises(pydantic.ValidationError):
        Settings.from_env({**env, "FTJOBS_TEMP_MAX_AGE_S": "-1"})


def test_startup_sweeps_old_temporaries_and_keeps_fresh_ones(make_client, settings):  # type: ignore[no-untyped-def]
    store = Path(Storage(settings.storage_url).root)
    spool = Path(settings.data_dir) / "tmp"
    old = [
        plant(store / "default/files/file-a.jsonl.tmp-0123456789abcdef", 2 * HOUR),
        plant(store / "acme/jobs/ftjob-x/adapter/adapter_model.safetensors.tmp-fedcba9876543210", 2 * HOUR),
        plant(spool / "upload-abc.parquet", 2 * HOUR),
    ]
    kept = [
        plant(store / "default/files/file-b.jsonl.tmp-00112233445566aa", 60),  # an upload still running
        plant(spool / "upload-def.parquet", 60),
        plant(store / "default/files/file-c.jsonl", 2 * HOUR),  # committed data is never a temporary
        plant(store / "acme/jobs/ftjob-x/manifest.json.tmp", 2 * HOUR),  # not an AtomicWriter name
    ]
    http = make_client(temp_max_age_s=HOUR)
    wait_gone(old)
    assert all(p.exists() for p in kept)
    assert http.get("/healthz").status_code == 200


def test_sweep_helpers_go_by_age(settings, tmp_path):  # type: ignore[no-untyped-def]
    storage = Storage(settings.storage_url)
    old = plant(Path(storage.root) / "t/files/x.jsonl.tmp-0123456789abcdef", 120)
    young = plant(Path(storage.root) / "t/files/y.jsonl.tmp-0123456789abcdef", 0)
    assert storage.sweep_temp(60) == [str(old)] and young.exists()
    assert storage.sweep_temp(0) == [str(young)]
    assert Storage(f"file://{tmp_path}/absent").sweep_temp(0) == []
    spool = tmp_path / "spool"
    old_spool, young_spool = plant(spool / "a.parquet", 120), plant(spool / "b.parquet", 0)
    (spool / "sub").mkdir()
    assert sweep_folder(str(spool), 60) == [str(old_spool)] and young_spool.exists()
    assert sweep_folder(str(tmp_path / "absent"), 0) == []


def test_a_failing_sweep_is_logged_and_the_api_keeps_serving(make_client, settings, caplog):  # type: ignore[no-untyped-def]
    plant(Path(settings.data_dir) / "tmp", 2 * HOUR)  # the spool folder is a file: listing it fails
    http = make_client(temp_max_age_s=0)
    deadline = time.monotonic() + 20
    while "sweeping stale temporary files failed" not in caplog.text:
        assert time.monotonic() < deadline, caplog.text
        time.sleep(0.05)
    assert http.get("/healthz").status_code == 200
    assert http.get("/v1/files").status_code == 200
