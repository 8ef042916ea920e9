"""Two tenants on one app and a real finished job: what the cross-tenant matrix and the fuzzer probe."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
from fastapi.routing import APIRoute

from ftjobs.service.handlers import route_table
from tests.service.conftest import ROWS, jsonl, upload

TERMINAL = ("succeeded", "failed", "cancelled")


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def upload_as(http: httpx.Client, key: str, rows: list[dict[str, Any]], name: str = "train.jsonl") -> str:
    """Upload a JSONL file for the key's tenant; returns its id."""
    response = upload(http, jsonl(rows), filename=name, headers=bearer(key))
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def tiny_job_request(model: Path, training_file: str, validation_file: str) -> dict[str, Any]:
    """A LoRA job on the tiny causal LM that finishes in seconds: one short epoch, evaluated, with artifacts."""
    return {
        "model": str(model),
        "task": "causal_lm",
        "training_file": training_file,
        "validation_file": validation_file,
        "method": {"type": "lora", "r": 4, "alpha": 8},
        "hyperparameters": {"n_epochs": 1, "batch_size": 4, "learning_rate": 1e-3, "max_seq_length": 32},
    }


def finished_job(http: httpx.Client, key: str, model: Path, worker: Any, timeout: float = 600) -> dict[str, Any]:
    """Upload, submit and wait for a real tiny job of the key's tenant (a worker process runs it); its record."""
    rows = ROWS["prompt_completion"] * 8
    train = upload_as(http, key, rows)
    valid = upload_as(http, key, rows[:4], name="valid.jsonl")
    created = http.post("/v1/jobs", json=tiny_job_request(model, train, valid), headers=bearer(key))
    assert created.status_code == 201, created.text
    job_id = created.json()["id"]
    deadline = time.monotonic() + timeout
    while True:
        job = http.get(f"/v1/jobs/{job_id}", headers=bearer(key)).json()
        if job["status"] in TERMINAL or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert job["status"] == "succeeded", (job.get("status"), job.get("error"), worker.output()[-3000:])
    assert job["artifacts"], job  # published before the status is written (jobs/outputs/artifacts.py)
    return dict(job)


def id_routes(app: Any) -> Iterator[tuple[str, str, list[str]]]:
    """(method, path template, path parameters) of every API route that takes an id in its path."""
    for route in route_table(app.routes):
        original = getattr(route, "original_route", route)
        if not isinstance(original, APIRoute) or not route.include_in_schema:
            continue
        params = list(route.param_convertors)
        if params:
            for method in sorted(route.methods):
                yield method, route.path, params
