"""`X-Request-ID`: accepted or generated, echoed on every response, in every error body, in the client's exception
and the CLI's error line, and in the API's JSON log lines; a polled GET writes no INFO access line."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest

from ftjobs.client.cli import main as cli_main
from ftjobs.client.client import Client
from ftjobs.client.errors import NotFound, error_for_status
from ftjobs.service.requestid import MAX_REQUEST_ID_LENGTH
from tests.jobs.helpers import eventually
from tests.service.api_process import api_process
from tests.service.conftest import assert_error

GENERATED = re.compile(r"req_[0-9a-f]{32}")
MISSING_JOB = "/v1/jobs/ftjob-doesnotexist0000000000"


def test_generated_when_absent(http: Any) -> None:
    first, second = http.get("/healthz"), http.get("/healthz")
    assert GENERATED.fullmatch(first.headers["x-request-id"])
    assert first.headers["x-request-id"] != second.headers["x-request-id"]


def test_caller_id_echoed(http: Any) -> None:
    assert http.get("/healthz", headers={"X-Request-ID": "trace-42/abc:1"}).headers["x-request-id"] == "trace-42/abc:1"
    longest = "a" * MAX_REQUEST_ID_LENGTH
    assert http.get("/v1/jobs", headers={"X-Request-ID": longest}).headers["x-request-id"] == longest


@pytest.mark.parametrize(
    "bad", ["has spaces", "a" * (MAX_REQUEST_ID_LENGTH + 1), "tab\there", "", "quote\"and'more ok?"]
)
def test_malformed_id_replaced(http: Any, bad: str) -> None:
    echoed = http.get("/healthz", headers={"X-Request-ID": bad}).headers["x-request-id"]
    assert echoed != bad and GENERATED.fullmatch(echoed)


def test_non_ascii_id_replaced(http: Any) -> None:
    raw = "café-id".encode()  # bytes a client may send; not printable ASCII
    response = http.get("/healthz", headers=[(b"x-request-id", raw)])
    assert GENERATED.fullmatch(response.headers["x-request-id"])


def test_error_bodies_carry_the_id(http: Any, make_client: Any) -> None:
    response = http.get(MISSING_JOB, headers={"X-Request-ID": "err-1"})
    error = assert_error(response, 404, "job_not_found")
    assert error["request_id"] == response.headers["x-request-id"] == "err-1"
    # a validation error, a 405, an unknown path and a malformed JSON body: the same field, the same id
    for resp in (
        http.post("/v1/jobs", json={"model": 1}),
        http.put("/v1/jobs"),
        http.get("/v1/nothing-here"),
        http.post("/v1/jobs", content=b"{nope", headers={"Content-Type": "application/json"}),
    ):
        assert resp.status_code >= 400
        assert resp.json()["error"]["request_id"] == resp.headers["x-request-id"], resp.text
    # answered by the auth middleware, before any route: still there
    locked = make_client(api_keys={"ftj_someone-0001": "alpha"})
    unauthorized = locked.get("/v1/jobs", headers={"X-Request-ID": "no-key-1"})
    assert_error(unauthorized, 401, "unauthorized")
    assert unauthorized.json()["error"]["request_id"] == unauthorized.headers["x-request-id"] == "no-key-1"


def test_client_exception_and_cli_show_the_id(client: Client, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(NotFound) as caught:
        client.jobs.get("ftjob-doesnotexist0000000000")
    assert caught.value.request_id and GENERATED.fullmatch(caught.value.request_id)
    assert caught.value.body["error"]["request_id"] == caught.value.request_id
    # no header (a proxy dropped it): the body still names it
    body = json.dumps({"error": {"code": "job_not_found", "message": "x", "request_id": "from-body"}})
    assert error_for_status(404, body, {}).request_id == "from-body"
    assert error_for_status(502, "<html>bad gateway</html>", {}).request_id is None

    assert cli_main(["status", "ftjob-doesnotexist0000000000"], client=client) == 1
    err = capsys.readouterr().err
    assert "error: job_not_found" in err
    match = re.search(r"request id: (\S+)", err)
    assert match and GENERATED.fullmatch(match.group(1))


def _lines(log: Path) -> list[dict[str, Any]]:
    """The JSON objects of the API's log; any other line fails the test (JSON means every line)."""
    out = []
    for line in log.read_text().splitlines():
        if line.strip():
            out.append(json.loads(line))
    return out


def test_json_logs_carry_the_id_and_skip_polls(env: dict[str, str], tmp_path: Path) -> None:
    log = tmp_path / "api.log"
    with api_process(env, log, FTJOBS_LOG_FORMAT="json") as api, httpx.Client(base_url=api.url) as http:
        for _ in range(5):  # a client polling a list: no INFO line each
            assert http.get("/v1/jobs", headers={"X-Request-ID": "poll-1"}).status_code == 200
        missing = http.get(MISSING_JOB, headers={"X-Request-ID": "missing-1"})
        assert missing.status_code == 404
        created = http.post("/v1/jobs", json={"model": "x"}, headers={"X-Request-ID": "mutate-1"})
        assert created.status_code in (400, 404, 422)
        assert eventually(lambda: any(e.get("request_id") == "mutate-1" for e in _lines(log)), timeout=30)
        lines = _lines(log)
    for entry in lines:
        assert {"time", "level", "logger", "message"} <= set(entry), entry
    access = [e for e in lines if e["logger"] == "ftjobs.access"]
    by_id = {e.get("request_id"): e for e in access}
    assert "poll-1" not in by_id  # the polls stayed at DEBUG
    assert by_id["missing-1"]["status"] == 404 and by_id["missing-1"]["level"] == "INFO"
    assert by_id["mutate-1"]["method"] == "POST" and by_id["mutate-1"]["path"] == "/v1/jobs"
    assert not any("uvicorn.access" == e["logger"] for e in lines)
    assert any(e["logger"].startswith("uvicorn") for e in lines)  # uvicorn's own lines come through, as JSON


def test_an_unexpected_error_still_carries_the_id(settings: Any) -> None:
    """A 500 is rendered outside every middleware (Starlette's last-resort handler): the id is still there."""
    from fastapi.testclient import TestClient

    from ftjobs.service.main import create_app

    app = create_app(settings)

    def boom() -> None:
        raise RuntimeError("a bug of ours")

    app.add_api_route("/boom", boom)
    with TestClient(app, raise_server_exceptions=False) as tc:
        response = tc.get("/boom", headers={"X-Request-ID": "bug-1"})
    error = assert_error(response, 500, "internal_error")
    assert error["request_id"] == response.headers["x-request-id"] == "bug-1"
    assert "a bug of ours" not in response.text


def test_a_jobs_worker_lines_carry_the_request_that_created_it(
    http: Any, env: dict[str, str], tmp_path: Path, tiny_causal_lm: Path
) -> None:
    """The id travels with the job (its RQ job's meta): validation and training lines on the worker name it."""
    import time

    from tests.conftest import WorkerProcess
    from tests.service.conftest import ROWS, jsonl, upload

    worker = WorkerProcess({**env, "FTJOBS_LOG_FORMAT": "json"}, tmp_path / "worker.log")
    try:
        rows = ROWS["prompt_completion"] * 8
        train = upload(http, jsonl(rows)).json()["id"]
        body = {"model": str(tiny_causal_lm), "task": "causal_lm", "training_file": train, "validation_file": train,
                "method": {"type": "lora", "r": 4, "alpha": 8},
                "hyperparameters": {"n_epochs": 1, "batch_size": 4, "max_seq_length": 32, "max_steps": 2}}  # fmt: skip
        created = http.post("/v1/jobs", json=body, headers={"X-Request-ID": "create-42"})
        assert created.status_code == 201, created.text
        job_id, deadline = created.json()["id"], time.monotonic() + 600
        while (job := http.get(f"/v1/jobs/{job_id}").json())["status"] not in ("succeeded", "failed", "cancelled"):
            assert time.monotonic() < deadline, job
            time.sleep(0.5)
        assert job["status"] == "succeeded", (job.get("error"), worker.output()[-3000:])
    finally:
        worker.stop()
    entries = [json.loads(line) for line in worker.output().splitlines() if line.startswith("{")]
    about_job = [e for e in entries if e.get("job_id") == job_id]
    assert about_job, worker.output()[-3000:]
    assert {e.get("request_id") for e in about_job} == {"create-42"}, about_job
    assert any(e["message"].startswith("worker ") and "listening on" in e["message"] for e in entries)  # JSON too
