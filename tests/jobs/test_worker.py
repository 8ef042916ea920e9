"""Worker settings come from FTJOBS_* variables when asked for, with defaults a laptop can run."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ftjobs.core.queue import redact_url
from ftjobs.core.settings import Settings


def test_settings_defaults_and_overrides(tmp_path: Path) -> None:
    s = Settings.from_env({"FTJOBS_DATA_DIR": str(tmp_path)})
    assert s.redis_url == "redis://127.0.0.1:6379/0" and s.queue == "ftjobs-default"
    assert s.storage_url == f"file://{tmp_path}/store" and s.model_roots == (tmp_path / "models",)
    assert (s.heartbeat_s, s.stale_after_s, s.max_attempts) == (5, 60, 3)

    roots = os.pathsep.join(["/models/a", "/models/b"])
    s = Settings.from_env(
        {"FTJOBS_MODEL_ROOTS": roots, "FTJOBS_MAX_ATTEMPTS": "5", "FTJOBS_QUEUE": "q"}
    )
    assert s.model_roots == (Path("/models/a"), Path("/models/b"))
    assert s.max_attempts == 5 and s.queue == "q"
    assert s.data_dir == Path(".ftjobs").resolve()


def test_redis_password_never_reaches_the_log() -> None:
    assert redact_url("redis://:s3cret@redis.internal:6380/1") == "redis://:***@redis.internal:6380/1"
    assert redact_url("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"


def test_model_paths_resolve_only_under_the_roots(tmp_path: Path) -> None:
    from ftjobs.jobs.data.inputs import resolve_model_path
    from ftjobs.jobs.errors import ModelNotFound

    first, second, outside = tmp_path / "r1", tmp_path / "r2", tmp_path / "elsewhere"
    for folder in (second / "org" / "m", outside / "m"):
        folder.mkdir(parents=True)
        (folder / "config.json").write_text("{}")
    (first / "org").mkdir(parents=True)
    (first / "org" / "escape").symlink_to(outside / "m")
    roots = (first, second)

    assert resolve_model_path("org/m", roots) == (second / "org" / "m").resolve()
    assert resolve_model_path(str(second / "org" / "m"), roots) == (second / "org" / "m").resolve()
    for bad in (str(outside / "m"), "org/escape", "org/missing"):
        with pytest.raises(ModelNotFound) as e:
            resolve_model_path(bad, roots)
        assert e.value.param == "model"
