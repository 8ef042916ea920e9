"""The committed openapi/openapi.json matches the app, and the spec is honest about errors."""

from __future__ import annotations

import subprocess
import sys

from ftjobs.service.openapi import render
from tests.conftest import REPO


def test_committed_spec_is_up_to_date():  # type: ignore[no-untyped-def]
    result = subprocess.run(
        [sys.executable, "-m", "ftjobs.service.openapi", "--check"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_check_fails_on_drift(tmp_path):  # type: ignore[no-untyped-def]
    stale = tmp_path / "openapi.json"
    stale.write_text("{}\n")
    result = subprocess.run(
        [sys.executable, "-m", "ftjobs.service.openapi", "--check", "--path", str(stale)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1 and "out of date" in result.stderr


def test_operation_ids_and_error_responses():  # type: ignore[no-untyped-def]
    import json

    spec = json.loads(render())
    assert spec["info"]["title"] == "ftjobs"
    assert "HTTPValidationError" not in spec["components"]["schemas"]  # 422s are ErrorBody too
    ids = []
    for path, methods in spec["paths"].items():
        for method, op in methods.items():
            tag = op["tags"][0]
            assert op["operationId"].startswith(f"{tag}-"), (path, method, op["operationId"])
            assert op.get("summary") and op.get("description"), (path, method)  # from the one-line docstring
            ids.append(op["operationId"])
            for status, response in op["responses"].items():
                if int(status) >= 400:
                    ref = response["content"]["application/json"]["schema"]["$ref"]
                    assert ref.endswith("/ErrorBody"), (path, method, status)
    assert len(ids) == len(set(ids))
    assert {"jobs-create_job", "files-upload_file", "artifacts-download_artifact", "health-readyz"} <= set(
        ids
    )
    create = spec["paths"]["/v1/jobs"]["post"]["responses"]
    assert {"201", "200", "404", "409", "422", "401", "503"} <= set(create)
    upload = spec["paths"]["/v1/files"]["post"]
    assert "multipart/form-data" in upload["requestBody"]["content"] and "413" in upload["responses"]
