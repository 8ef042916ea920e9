"""Import boundaries, checked in fresh interpreters: no torch in the API, no web stack in the worker."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO

HEAVY = ["torch", "transformers", "peft"]


def loaded_after(code: str, watch: list[str]) -> list[str]:
    """Which of `watch` (packages, e.g. `torch` or `ftjobs.jobs`) are in sys.modules after `code` runs."""
    report = (
        f"print(json.dumps(sorted({{w for w in {watch!r} for m in sys.modules if m == w or m.startswith(w + '.')}})))"
    )
    probe = f"{code}\nimport json, sys\n{report}"
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return list(json.loads(result.stdout.strip().splitlines()[-1]))


def test_service_never_loads_the_training_stack():  # type: ignore[no-untyped-def]
    assert loaded_after("import ftjobs.service.main, ftjobs.service.openapi", [*HEAVY, "ftjobs.jobs"]) == []


def test_app_and_its_spec_never_load_the_training_stack():  # type: ignore[no-untyped-def]
    code = (
        "from ftjobs.service.config import Settings\n"
        "from ftjobs.service.main import create_app\n"
        "create_app(Settings.from_env({})).openapi()"
    )
    assert loaded_after(code, [*HEAVY, "ftjobs.jobs"]) == []


@pytest.mark.parametrize("module", ["ftjobs", "ftjobs.client.models", "ftjobs.core.keys"])
def test_client_contract_is_light(module):  # type: ignore[no-untyped-def]
    assert (
        loaded_after(
            f"import {module}",
            [*HEAVY, "fastapi", "starlette", "httpx", "rq", "redis", "ftjobs.service", "ftjobs.jobs"],
        )
        == []
    )


def test_jobs_never_load_the_web_stack():  # type: ignore[no-untyped-def]
    assert (
        loaded_after(
            "import ftjobs.jobs, ftjobs.jobs.train, ftjobs.jobs.worker",
            ["fastapi", "starlette", "ftjobs.service", "httpx"],
        )
        == []
    )


def test_the_http_client_loads_httpx_but_no_server_or_training_stack():  # type: ignore[no-untyped-def]
    watch = [*HEAVY, "fastapi", "starlette", "rq", "ftjobs.service", "ftjobs.jobs"]
    assert loaded_after("import ftjobs.client.client", watch) == []


def test_the_probe_sees_a_loaded_package():  # type: ignore[no-untyped-def]
    """The checks above can fail: the same probe reports a package that was imported."""
    assert loaded_after("import httpx", ["httpx", "torch"]) == ["httpx"]
