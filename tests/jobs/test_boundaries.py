"""The worker side never loads the API's stack, and the worker's parent process never loads torch."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import REPO

FORBIDDEN = ("fastapi", "starlette", "httpx", "service")


def loaded_after(statement: str) -> set[str]:
    code = f"import sys, json; {statement}; print(json.dumps(sorted(m.split('.')[0] for m in sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    return set(json.loads(out.stdout.splitlines()[-1]))


def test_jobs_never_imports_the_api_stack() -> None:
    loaded = loaded_after("import jobs.train, jobs.worker, jobs.artifacts, jobs.report")
    assert not loaded & set(FORBIDDEN)


def test_the_worker_parent_has_no_torch() -> None:
    loaded = loaded_after("import jobs, jobs.worker, jobs.report; jobs.worker.WorkerSettings.from_env()")
    assert "torch" not in loaded and "transformers" not in loaded
