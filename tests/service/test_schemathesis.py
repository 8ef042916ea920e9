"""Schemathesis against the served API: a live uvicorn on real Redis, one tenant's key, data from a real finished job.

Every phase runs (examples, coverage, fuzzing, stateful over the spec's OpenAPI links) with few examples per
operation, under a deadline; the checks are the ones a client relies on: no 5xx, responses, status codes,
content types and headers as the spec declares them, 405 + `Allow` for undeclared methods. Then every artifact
of the job is downloaded and checked against the spec (the stateful run reaches the first one only)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis

from tests.conftest import REPO
from tests.service.tenant_jobs import bearer, finished_job, tiny_job_request

KEY = "sk-fuzz-0123456789abcdef"
MAX_EXAMPLES = 60  # per operation and phase: small, so the run takes a minute or two
# Stateful scenarios (chains of linked calls) and their length; schemathesis' defaults walk few of the links.
CONFIG = """
[phases.stateful]
max-steps = 12

[phases.stateful.generation]
max-examples = 300
"""
DEADLINE_S = 420  # the whole schemathesis run
CHECKS = [
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
    "unsupported_method",
    "allow_header_conformance",
]
# Limits far above what one sequential client sends: this run is about the spec, not about throttling.
GENEROUS_LIMITS = """
[defaults]
requests_per_second = 100000
max_active_jobs = 100000
max_files = 100000
"""


@pytest.fixture
def env(env: dict[str, str], tmp_path: Path) -> dict[str, str]:
    tenants = tmp_path / "tenants.toml"
    tenants.write_text(GENEROUS_LIMITS)
    return {**env, "FTJOBS_API_KEYS": f"{KEY}:fuzz", "FTJOBS_TENANTS_FILE": str(tenants)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def live_api(env: dict[str, str], tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """`uvicorn --factory ftjobs.service.main:app_from_env` on a free port; (base URL, its access log)."""
    port, log = free_port(), tmp_path / "api.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--factory", "ftjobs.service.main:app_from_env"]
            + ["--host", "127.0.0.1", "--port", str(port), "--no-use-colors"],
            cwd=REPO,
            # the API's own access log (service/requestid.py), every request: GETs that succeed are at DEBUG
            env={**os.environ, **env, "FTJOBS_LOG_FORMAT": "json", "FTJOBS_LOG_LEVEL": "DEBUG"},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if httpx.get(f"{base}/healthz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
                time.sleep(0.2)
            yield base, log
        finally:
            proc.terminate()
            proc.wait(30)


def run_schemathesis(base: str, workdir: Path) -> tuple[dict[str, Any], str, float]:
    """The schemathesis CLI over the live API; (its JSON report, its output, seconds)."""
    report, config = workdir / "schemathesis.json", workdir / "schemathesis.toml"
    config.write_text(CONFIG)
    command = [sys.executable, "-m", "schemathesis.cli", "--config-file", str(config), "run", f"{base}/openapi.json"]
    command += ["--header", f"Authorization: Bearer {KEY}", "--checks", ",".join(CHECKS)]
    command += ["--phases", "examples,coverage,fuzzing,stateful", "--max-examples", str(MAX_EXAMPLES)]
    command += ["--seed", "20260", "--workers", "1", "--request-timeout", "30", "--generation-database", "none"]
    command += ["--no-color", "--report", "json", "--report-json-path", str(report)]
    started = time.monotonic()
    # cwd: its own folder, so no schemathesis.toml of the repository is picked up and nothing is written there
    done = subprocess.run(command, cwd=workdir, capture_output=True, text=True, timeout=DEADLINE_S)
    return json.loads(report.read_text()), done.stdout + done.stderr, time.monotonic() - started


def test_schemathesis_finds_no_server_error_and_no_spec_violation(  # type: ignore[no-untyped-def]
    http, worker, tiny_causal_lm, live_api, tmp_path
):
    job = finished_job(http, KEY, tiny_causal_lm, worker)  # real records, events, metrics and artifacts to read
    worker.stop()  # jobs the fuzzer creates stay where the API leaves them
    pending = http.post(
        "/v1/jobs",
        json=tiny_job_request(tiny_causal_lm, job["training_file"], job["validation_file"]),
        headers=bearer(KEY),
    )
    assert pending.status_code == 201, pending.text
    base, access_log = live_api
    # Every real artifact, checked against the spec by schemathesis itself (the stateful run reaches data/0 only),
    # before the fuzzing, which may delete the job's fine-tuned model.
    schema = schemathesis.openapi.from_url(f"{base}/openapi.json")
    download = schema["/v1/jobs/{job_id}/artifacts/{name}"]["GET"]
    served = set()
    for artifact in job["artifacts"]:
        case = download.Case(path_parameters={"job_id": job["id"], "name": artifact["name"]})
        response = case.call_and_validate(base_url=base, headers=bearer(KEY))
        assert response.status_code == 200
        served.add(response.headers["content-type"][0].split(";")[0])
    assert {"application/json", "text/markdown", "application/octet-stream"} <= served, served

    report, output, seconds = run_schemathesis(base, tmp_path)
    lines = [json.loads(line) for line in access_log.read_text().splitlines() if line.startswith("{")]
    requests = [str(e["status"]) for e in lines if e["logger"] == "ftjobs.access"]
    summary = (
        f"schemathesis: {report['operations']['tested']}/{report['operations']['total']} operations, "
        f"{report['test_cases']['generated']} test cases, {len(requests)} requests, "
        f"{sum(r.startswith('5') for r in requests)} 5xx, {len(report['failures'])} failure groups, "
        f"{report['running_time']:.0f} s engine / {seconds:.0f} s wall"
    )
    print(summary)
    assert report["complete"] and report["exit_code"] == 0, output[-12000:]
    assert report["failures"] == [] and report["errors"] == [], output[-12000:]
    assert report["test_cases"]["with_failures"] == 0, output[-12000:]
    assert report["operations"]["tested"] == report["operations"]["total"] >= 15, report["operations"]
    assert all(status == "success" for status in {p["status"] for p in report["phases"].values()}), report["phases"]
    assert len(requests) > 500 and not any(r.startswith("5") for r in requests), summary
