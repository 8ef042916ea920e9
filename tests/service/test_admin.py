"""The admin view: `GET /v1/admin/queues` and `/v1/admin/workers` (admin scope only), `ftjobs queue` / `workers`.

A real worker process runs one long job while two more wait: the routes must show that job on the worker, the
waiting ones in the validation queue (one admitted into RQ, one pending outside it), and ftjobs' own counts."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest

from ftjobs.client.admin import Admin
from ftjobs.client.cli import main as cli_main
from ftjobs.client.client import Client
from ftjobs.client.errors import PermissionDenied
from ftjobs.client.models.admin import QueueOverview, WorkerOverview
from tests.conftest import QUEUE
from tests.jobs.helpers import VALIDATE_QUEUE, eventually
from tests.service.conftest import ROWS, assert_error
from tests.service.tenant_jobs import bearer, tiny_job_request, upload_as
from tests.service.test_keys import key_lines, write_tenants

ADMIN, USER = "ftj_admin-key-0001", "ftj_user-key-0002"
PATHS = ("/v1/admin/queues", "/v1/admin/workers")


@pytest.fixture
def tc(make_client: Any, tmp_path: Path) -> Any:
    path = tmp_path / "tenants.toml"
    write_tenants(
        path,
        key_lines("ops", ADMIN, ["read", "submit", "admin"], "oncall")
        + key_lines("alpha", USER, ["read", "submit"], "ci"),
    )
    return make_client(tenants_file=path)


def test_admin_routes_need_the_admin_scope(tc: Any) -> None:
    for path in PATHS:
        error = assert_error(tc.get(path, headers=bearer(USER)), 403, "insufficient_scope", param="admin")
        assert "ci" in error["message"]
        assert_error(tc.get(path), 401, "unauthorized")
        assert tc.get(path, headers=bearer(ADMIN)).status_code == 200
    with pytest.raises(PermissionDenied) as caught:
        Admin(Client(http_client=tc, api_key=USER, max_retries=0)).queues()
    assert caught.value.code == "insufficient_scope" and caught.value.request_id


def test_admin_routes_are_in_the_spec(tc: Any) -> None:
    spec = tc.get("/openapi.json").json()
    for path, model in zip(PATHS, ("QueueOverview", "WorkerOverview"), strict=True):
        get = spec["paths"][path]["get"]
        assert get["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith(model)
        assert "403" in get["responses"]


def _job(tc: Any, model: Path, train: str, valid: str, **hp: Any) -> str:
    body = tiny_job_request(model, train, valid)
    body["hyperparameters"].update(hp)
    created = tc.post("/v1/jobs", json=body, headers=bearer(USER))
    assert created.status_code == 201, created.text
    return str(created.json()["id"])


def _status(tc: Any, job_id: str) -> str:
    return str(tc.get(f"/v1/jobs/{job_id}", headers=bearer(USER)).json()["status"])


def test_a_running_job_and_a_backlog(
    tc: Any, worker: Any, tiny_causal_lm: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    admin = Client(http_client=tc, api_key=ADMIN)
    rows = ROWS["prompt_completion"] * 8
    train, valid = upload_as(tc, USER, rows), upload_as(tc, USER, rows[:4], name="valid.jsonl")
    long_job = _job(tc, tiny_causal_lm, train, valid, max_steps=1_000_000)  # runs until cancelled
    try:
        assert eventually(lambda: _status(tc, long_job) == "running", timeout=300), worker.output()[-3000:]
        waiting = [_job(tc, tiny_causal_lm, train, valid, max_steps=2) for _ in range(2)]
        time.sleep(1.0)  # the oldest waiting job has an age

        queues = QueueOverview.model_validate(tc.get(PATHS[0], headers=bearer(ADMIN)).json())
        by_name = {q.name: q for q in queues.queues}
        validate, train_q = by_name[VALIDATE_QUEUE], by_name[QUEUE]
        # The busy worker takes nothing: one of alpha's validations in RQ, the other pending outside it.
        assert (validate.depth, validate.pending) == (1, 1), validate
        assert [(t.tenant, t.pending, t.admitted) for t in validate.tenants] == [("alpha", 1, 1)]
        assert validate.oldest_age_s is not None and validate.oldest_age_s >= 1.0
        assert train_q.running == 1 and train_q.depth == 0 and train_q.workers == 1
        counts = {t.tenant: t.counts for t in queues.jobs}
        assert counts["alpha"].get("running") == 1 and counts["alpha"].get("validating_files") == 2, counts

        def probed() -> WorkerOverview:
            return WorkerOverview.model_validate(tc.get(PATHS[1], headers=bearer(ADMIN)).json())

        assert eventually(lambda: probed().workers[0].hardware is not None, timeout=300)
        (w,) = probed().workers
        assert w.state == "busy" and set(w.queues) == {VALIDATE_QUEUE, QUEUE}
        assert (w.current_job, w.current_attempt, w.current_tenant) == (long_job, 1, "alpha")
        assert w.current_rq_job == f"{long_job}-1"
        assert w.last_heartbeat_age_s is not None and w.last_heartbeat_age_s < 60
        assert w.pid == worker.proc.pid
        assert w.hardware is not None and w.hardware.cpu_count == os.cpu_count()
        assert w.hardware.device in ("cpu", "cuda", "mps") and w.hardware.torch_version

        # The CLI prints the same as tables.
        assert cli_main(["queue"], client=admin) == 0
        out = capsys.readouterr().out
        assert VALIDATE_QUEUE in out and "alpha:1+1" in out and "running=1" in out
        assert cli_main(["workers"], client=admin) == 0
        out = capsys.readouterr().out
        assert long_job in out and "busy" in out and "alpha" in out
        assert cli_main(["--json", "workers"], client=admin) == 0
        assert WorkerOverview.model_validate_json(capsys.readouterr().out).workers[0].current_job == long_job
    finally:
        for job_id in [long_job, *locals().get("waiting", [])]:
            tc.post(f"/v1/jobs/{job_id}/cancel", headers=bearer(USER))
