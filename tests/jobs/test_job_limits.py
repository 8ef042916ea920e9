"""Per-job limits from the tenants file: the API refuses the steps it can count (422), a real worker stops a job
at a step, token or wall-time limit and fails it with `job_limit_exceeded`, keeping its events and metrics."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ftjobs.core.keys import checkpoints_dir
from ftjobs.core.tenants import key_hash
from tests.conftest import WorkerProcess
from tests.jobs.helpers import eventually, store_root

ROWS = [{"prompt": f"count to {n} :", "completion": " ".join(str(i) for i in range(1, n + 1))} for n in range(1, 11)]
# One tenant per limit, each with its own key; the limits are tiny so that a tiny job passes them.
TENANTS = {
    "steps": ("key-steps-0123456789", "max_job_steps = 6"),
    "tokens": ("key-tokens-0123456789", "max_job_tokens = 300"),
    "wall": ("key-wall-0123456789", "max_job_wall_s = 1.0"),
}


@pytest.fixture
def limits_env(env: dict[str, str], tmp_path: Path, tiny_causal_lm: Path) -> dict[str, str]:
    """The deployment's tenants file (hashed keys, a limit each) and the same keys for FTJOBS_API_KEYS."""
    lines = []
    for tenant, (key, limit) in TENANTS.items():
        lines += [f"[tenants.{tenant}]", limit, f"[[tenants.{tenant}.keys]]", f'sha256 = "{key_hash(key)}"', ""]
    path = tmp_path / "tenants.toml"
    path.write_text("\n".join(lines))
    keys = ",".join(f"{key}:{tenant}" for tenant, (key, _) in TENANTS.items())
    extra = {"FTJOBS_TENANTS_FILE": str(path), "FTJOBS_API_KEYS": keys, "FTJOBS_CHECKPOINT_STEPS": "3"}
    return {**env, **extra, "MODEL": str(tiny_causal_lm)}


@pytest.fixture
def api(limits_env: dict[str, str]) -> Iterator[httpx.Client]:
    from fastapi.testclient import TestClient

    from ftjobs.core.settings import Settings
    from ftjobs.service.main import create_app

    with TestClient(create_app(Settings.from_env(limits_env)), raise_server_exceptions=False) as tc:
        yield tc


@pytest.fixture
def limits_worker(limits_env: dict[str, str], tmp_path: Path) -> Iterator[WorkerProcess]:
    w = WorkerProcess(limits_env, tmp_path / "worker.log")
    yield w
    w.stop()


def auth(tenant: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TENANTS[tenant][0]}"}


def upload(api: httpx.Client, tenant: str, rows: list[dict[str, Any]]) -> str:
    body = "".join(json.dumps(r) + "\n" for r in rows).encode()
    response = api.post("/v1/files", files={"file": ("t.jsonl", body, "application/jsonl")}, headers=auth(tenant))
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def create(api: httpx.Client, env: dict[str, str], tenant: str, file_id: str, **body: Any) -> httpx.Response:
    job = {
        "model": env["MODEL"],
        "training_file": file_id,
        "method": {"type": "lora", "r": 4, "alpha": 8},
        "eval_generation_limit": 0,
        "eval_samples": 0,
        **body,
    }
    return api.post("/v1/jobs", json=job, headers=auth(tenant))


def finished(api: httpx.Client, tenant: str, job_id: str, worker: WorkerProcess) -> dict[str, Any]:
    job: dict[str, Any] = {}

    def done() -> bool:
        nonlocal job
        assert worker.proc.poll() is None, worker.output()[-3000:]
        job = api.get(f"/v1/jobs/{job_id}", headers=auth(tenant)).json()
        return job["status"] in ("succeeded", "failed", "cancelled")

    assert eventually(done, timeout=300), (job, worker.output()[-3000:])
    return job


def assert_limit_failure(
    api: httpx.Client, env: dict[str, str], tenant: str, job: dict[str, Any], limit: str, value: str
) -> list[dict[str, Any]]:
    """Failed with the code, naming the limit and its value; its events and metrics kept; no weights or checkpoint."""
    assert job["status"] == "failed", job
    assert job["error"]["code"] == "job_limit_exceeded", job["error"]
    assert limit in job["error"]["message"] and value in job["error"]["message"], job["error"]
    assert job["artifacts"] == []
    events = api.get(f"/v1/jobs/{job['id']}/events", params={"limit": 1000}, headers=auth(tenant)).json()["data"]
    assert any(e["type"] == "status" and "job_limit_exceeded" in e["message"] for e in events)
    checkpoints = store_root(env) / checkpoints_dir(tenant, job["id"])
    assert eventually(lambda: not checkpoints.exists(), timeout=30)
    metrics = api.get(f"/v1/jobs/{job['id']}/metrics", params={"limit": 1000}, headers=auth(tenant)).json()["data"]
    return list(metrics)


def test_the_api_refuses_more_steps_than_the_tenant_may_train(api: httpx.Client, limits_env: dict[str, str]) -> None:
    file_id = upload(api, "steps", ROWS * 4)  # 40 rows
    over = create(api, limits_env, "steps", file_id, hyperparameters={"max_steps": 7})
    assert over.status_code == 422, over.text
    error = over.json()["error"]
    assert error["code"] == "job_limit_exceeded" and error["param"] == "hyperparameters.max_steps"
    assert "max_job_steps" in error["message"] and "6" in error["message"] and "7" in error["message"]

    # No max_steps: epochs x steps per epoch over the file's rows (36 train after the 10% split, batch 8 -> 5).
    over = create(api, limits_env, "steps", file_id, hyperparameters={"n_epochs": 2, "batch_size": 8})
    assert over.status_code == 422, over.text
    assert over.json()["error"]["param"] == "hyperparameters.n_epochs"
    assert "10 optimizer steps" in over.json()["error"]["message"]

    within = create(api, limits_env, "steps", file_id, hyperparameters={"n_epochs": 1, "batch_size": 8})
    assert within.status_code == 201, within.text
    # Another tenant's limits are its own: the deployment default (1,000,000 steps).
    other = create(api, limits_env, "tokens", upload(api, "tokens", ROWS), hyperparameters={"max_steps": 7})
    assert other.status_code == 201, other.text


def test_the_worker_fails_a_job_at_each_limit(
    api: httpx.Client, limits_env: dict[str, str], limits_worker: WorkerProcess
) -> None:
    # Steps the API cannot count (a data step may change the rows): the worker refuses the schedule up front.
    file_id = upload(api, "steps", ROWS * 4)
    created = create(
        api, limits_env, "steps", file_id, data={"dedup": "exact"}, hyperparameters={"n_epochs": 3, "batch_size": 2}
    )
    assert created.status_code == 201, created.text
    job = finished(api, "steps", created.json()["id"], limits_worker)
    assert_limit_failure(api, limits_env, "steps", job, "max_job_steps", "6")

    # Tokens: about 8 tokens a row, 4 rows a step -> past 300 tokens within ~10 of the 60 steps asked for.
    file_id = upload(api, "tokens", ROWS * 2)
    hp = {"max_steps": 60, "batch_size": 4, "max_seq_length": 32, "validation_split": 0.2}
    created = create(api, limits_env, "tokens", file_id, hyperparameters=hp)
    assert created.status_code == 201, created.text
    job = finished(api, "tokens", created.json()["id"], limits_worker)
    metrics = assert_limit_failure(api, limits_env, "tokens", job, "max_job_tokens", "300")
    assert 1 <= job["progress"]["step"] < 60 and job["progress"]["tokens_seen"] >= 300, job["progress"]
    assert any(m["split"] == "train" for m in metrics)  # the points it logged on the way are kept
    assert job["results"] == {}

    # Wall time: 1 s of training, checked at each step end; the checkpoints (every 3 steps) are removed all the same.
    file_id = upload(api, "wall", ROWS * 2)
    hp = {"max_steps": 5000, "batch_size": 4, "max_seq_length": 32, "validation_split": 0.2}
    created = create(api, limits_env, "wall", file_id, hyperparameters=hp)
    assert created.status_code == 201, created.text
    job = finished(api, "wall", created.json()["id"], limits_worker)
    assert_limit_failure(api, limits_env, "wall", job, "max_job_wall_s", "limit 1 s")
    assert 1 <= job["progress"]["step"] < 5000, job["progress"]
