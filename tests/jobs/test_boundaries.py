"""The worker side never loads the API's stack, and the worker's parent process never loads torch."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import REPO

FORBIDDEN = {"fastapi", "starlette", "httpx", "ftjobs.service", "ftjobs.launch"}


def loaded_after(statement: str) -> set[str]:
    """Top-level packages and ftjobs rooms in sys.modules after `statement`, in a fresh interpreter."""
    code = (
        f"import sys, json; {statement}; "
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules} | "
        "{'.'.join(m.split('.')[:2]) for m in sys.modules if m.startswith('ftjobs.')})))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    return set(json.loads(out.stdout.splitlines()[-1]))


def test_jobs_never_imports_the_api_stack() -> None:
    loaded = loaded_after(
        "import ftjobs.jobs.train, ftjobs.jobs.worker, ftjobs.jobs.outputs.artifacts, ftjobs.jobs.report"
    )
    assert "ftjobs.jobs" in loaded  # the probe sees what it imported
    assert not loaded & FORBIDDEN


def test_the_worker_parent_has_no_torch() -> None:
    loaded = loaded_after(
        "import ftjobs.jobs.worker, ftjobs.jobs.report, ftjobs.core.settings as s; s.Settings.from_env()"
    )
    assert "ftjobs.core" in loaded
    assert "torch" not in loaded and "transformers" not in loaded
