"""POST /v1/sweeps checks its search space (4xx naming the field), then GET, list and cancel work without a worker."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from ftjobs.core import sweeps as layout
from tests.service.conftest import ROWS, assert_error, jsonl, upload

LR = {"type": "float", "low": 1e-4, "high": 1e-1, "log": True}


@pytest.fixture
def create_sweep(http: httpx.Client, training_file: str, model_path: str):  # type: ignore[no-untyped-def]
    def create(search_space: dict[str, Any] | None = None, job: dict[str, Any] | None = None, **body: Any):
        base = {"model": model_path, "training_file": training_file, **(job or {})}
        space = search_space if search_space is not None else {"hyperparameters.learning_rate": LR}
        return http.post("/v1/sweeps", json={"job": base, "search_space": space, **body})

    return create


def test_bad_search_spaces_are_refused_naming_the_field(create_sweep) -> None:  # type: ignore[no-untyped-def]
    name = "hyperparameters.no_such_thing"
    assert_error(create_sweep({name: LR}), 422, "validation_error", param=f"search_space.{name}")
    assert_error(create_sweep({"method.bogus": LR}), 422, "validation_error", param="search_space.method.bogus")
    assert_error(create_sweep({"method.type": {"type": "categorical", "values": ["full"]}}), 422, "validation_error")
    # A value the base job's field refuses (batch_size >= 1), on either bound or in a list.
    batch = {"type": "int", "low": 0, "high": 8}
    error = assert_error(create_sweep({"hyperparameters.batch_size": batch}), 422, "validation_error")
    assert error["param"] == "search_space.hyperparameters.batch_size" and "batch_size = 0" in error["message"]
    rank = {"type": "categorical", "values": [4, 8, 100000]}
    assert_error(create_sweep({"method.r": rank}), 422, "validation_error", param="search_space.method.r")
    # Ranges optuna cannot sample: the request model refuses them.
    for bad in ({"type": "float", "low": 1.0, "high": 0.1}, {"type": "float", "low": 0.0, "high": 0.1, "log": True}):
        error = assert_error(create_sweep({"hyperparameters.weight_decay": bad}), 422, "validation_error")
        assert error["param"].startswith("search_space.hyperparameters.weight_decay"), error
    assert_error(create_sweep({}), 422, "validation_error", param="search_space")
    assert_error(create_sweep({"learning_rate": LR}), 422, "validation_error")  # not `hyperparameters.<field>`
    # Grid: a finite set of values, at least n_trials points.
    error = assert_error(create_sweep(sampler="grid"), 422, "validation_error")
    assert error["param"] == "search_space.hyperparameters.learning_rate" and "step" in error["message"]
    grid = {"hyperparameters.batch_size": {"type": "categorical", "values": [2, 4]}}
    assert_error(create_sweep(grid, sampler="grid", n_trials=3), 422, "validation_error", param="n_trials")
    huge = {"hyperparameters.seed": {"type": "int", "low": 0, "high": 2**31 - 1}}
    assert_error(create_sweep(huge, sampler="grid"), 422, "validation_error", param="search_space.hyperparameters.seed")
    # The metric: one the task reports, with validation data to measure it on.
    assert_error(create_sweep(metric="accuracy"), 422, "validation_error", param="metric")
    no_eval = {"hyperparameters": {"validation_split": 0}}
    assert_error(create_sweep(job=no_eval), 422, "validation_error", param="job.validation_file")
    # The base job's own checks, under `job.`.
    assert_error(create_sweep(job={"training_file": "file-" + "0" * 20}), 404, "file_not_found", "job.training_file")
    assert_error(create_sweep(n_trials=0), 422, "validation_error", param="n_trials")
    assert_error(create_sweep(parallelism=0), 422, "validation_error", param="parallelism")


def test_create_get_list_cancel(http: httpx.Client, redis, create_sweep) -> None:  # type: ignore[no-untyped-def]
    space = {
        "hyperparameters.learning_rate": LR,
        "method.r": {"type": "categorical", "values": [4, 8]},
        "hyperparameters.n_epochs": {"type": "int", "low": 1, "high": 3},
    }
    response = create_sweep(space, n_trials=4, metric="perplexity")
    assert response.status_code == 201, response.text
    sweep = response.json()
    assert sweep["status"] == "running" and sweep["trials"] == [] and sweep["best"] is None
    assert sweep["direction"] == "minimize" and sweep["request"]["sampler"] == "tpe"
    assert sweep["id"].startswith("sweep-")
    labels = upload(http, jsonl(ROWS["text_label"] * 4)).json()["id"]
    job = {"task": "classification", "training_file": labels}
    other = create_sweep(job=job, metric="f1", sampler="random").json()
    assert other["direction"] == "maximize"

    listed = http.get("/v1/sweeps", params={"limit": 1}).json()
    assert [s["id"] for s in listed["data"]] == [other["id"]] and listed["has_more"]
    rest = http.get("/v1/sweeps", params={"after": listed["last_id"]}).json()
    assert [s["id"] for s in rest["data"]] == [sweep["id"]] and not rest["has_more"]
    assert http.get(f"/v1/sweeps/{sweep['id']}").json()["request"]["search_space"].keys() == space.keys()

    cancelled = http.post(f"/v1/sweeps/{sweep['id']}/cancel")
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["status"] == "cancelled" and cancelled.json()["finished_at"]
    assert http.post(f"/v1/sweeps/{sweep['id']}/cancel").json()["status"] == "cancelled"  # again: idempotent
    layout.write_sweep(redis, "default", other["id"], {"status": "succeeded"}, unless_ended=False)  # as a driver
    assert_error(http.post(f"/v1/sweeps/{other['id']}/cancel"), 409, "sweep_not_cancellable")
    assert_error(http.get("/v1/sweeps/sweep-" + "0" * 20), 404, "sweep_not_found")
    assert_error(http.get("/v1/sweeps/nope"), 404, "sweep_not_found")
    assert_error(http.get("/v1/sweeps", params={"after": "x"}), 422, "validation_error", param="after")


def test_a_tenant_sees_only_its_own_sweeps(make_client, training_file: str, model_path: str) -> None:  # type: ignore[no-untyped-def]
    keys = {"sk-alpha-0123456789abcdef": "alpha", "sk-beta-fedcba9876543210": "beta"}
    api = make_client(api_keys=keys)
    a, b = ({"Authorization": f"Bearer {key}"} for key in keys)
    train = upload(api, jsonl(ROWS["prompt_completion"] * 4), headers=a).json()["id"]
    body = {"job": {"model": model_path, "training_file": train}, "search_space": {"hyperparameters.learning_rate": LR}}
    sweep = api.post("/v1/sweeps", json=body, headers=a).json()
    assert sweep["tenant"] == "alpha"
    assert_error(api.get(f"/v1/sweeps/{sweep['id']}", headers=b), 404, "sweep_not_found")
    assert_error(api.post(f"/v1/sweeps/{sweep['id']}/cancel", headers=b), 404, "sweep_not_found")
    assert api.get("/v1/sweeps", headers=b).json()["data"] == []
    # B cannot start a sweep on A's file either.
    assert_error(api.post("/v1/sweeps", json=body, headers=b), 404, "file_not_found", param="job.training_file")
    assert api.get(f"/v1/sweeps/{sweep['id']}", headers=a).json()["status"] == "running"
