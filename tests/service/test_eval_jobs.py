"""Evaluation jobs (`POST /v1/evaluations`): a finished job, one of its checkpoints or a base model scored on a file
without training, through the API and a real worker; and the 4xx that name the field."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ftjobs.client.models import JobCreate, LoraMethod, Task
from ftjobs.core import keys
from tests.jobs.helpers import create_job, store_root, wait_for
from tests.service.conftest import ROWS, assert_error, jsonl, upload
from tests.tiny_models import build_tiny_bert

WORDS = (("bake", "a"), ("kick", "b"), ("stir", "c"))


def rows(n: int, offset: int = 0) -> list[dict[str, Any]]:
    """Classification rows whose first word names the label; every third row of group `rare`."""
    return [
        {"text": f"{word} thing {i + offset}", "label": label, "group": "rare" if i % 3 == 0 else "common"}
        for i in range(n)
        for word, label in WORDS
    ]


def finished(redis, job_id: str) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    job = wait_for(redis, job_id, timeout=300)
    assert job["status"] == "succeeded", job
    return job


def test_an_evaluation_of_a_finished_job_equals_its_final_results(http, redis, env, worker, model_root: Path) -> None:  # type: ignore[no-untyped-def]
    bert = build_tiny_bert(model_root / "tiny-bert")
    train = upload(http, jsonl(rows(16)), filename="train.jsonl").json()["id"]
    valid = upload(http, jsonl(rows(6, offset=100)), filename="valid.jsonl").json()["id"]
    trained = http.post("/v1/jobs", json={
        "model": str(bert), "task": "classification", "training_file": train, "validation_file": valid,
        "group_field": "group", "method": {"type": "lora", "r": 4, "target_modules": ["query", "value"]},
        "hyperparameters": {"n_epochs": 2, "batch_size": 8, "learning_rate": 5e-3},
    })  # fmt: skip
    assert trained.status_code == 201, trained.text
    job = finished(redis, trained.json()["id"])

    response = http.post("/v1/evaluations", json={"file": valid, "job_id": job["id"]})
    assert response.status_code == 201, response.text
    created = response.json()
    assert created["evaluate_only"] is True and created["parent_job_id"] == job["id"]
    assert created["status"] == "validating_files" and created["task"] == "classification"
    evaluation = finished(redis, created["id"])

    final, scored = job["results"]["final"], evaluation["results"]["final"]
    print(f"trained job final {final}\nevaluation job final {scored}")
    assert scored["accuracy"] == final["accuracy"] and scored["f1"] == final["f1"]
    assert scored["eval_loss"] == pytest.approx(final["eval_loss"], rel=1e-4)
    assert evaluation["results"]["confusion_matrix"]["final"] == job["results"]["confusion_matrix"]["final"]
    assert evaluation["results"]["groups"]["final"] == job["results"]["groups"]["final"]  # the per-group breakdown
    assert "baseline" not in evaluation["results"] and "steps" not in evaluation["results"]  # nothing trained

    names = {a["name"] for a in evaluation["artifacts"]}
    assert {"metrics.json", "eval_samples.jsonl", "manifest.json"} <= names
    assert not any(n.startswith(("adapter/", "model/", "checkpoints/")) for n in names)  # no weights
    folder = store_root(env) / keys.job_dir("default", evaluation["id"]) / "artifacts"
    metrics = json.loads(next(folder.rglob("metrics.json")).read_text())
    assert metrics["final"] == scored
    samples = [json.loads(line) for line in next(folder.rglob("eval_samples.jsonl")).read_text().splitlines()]
    assert samples and all("predicted_label" in s for s in samples)
    listed = http.get("/v1/jobs").json()["data"]
    assert {j["id"] for j in listed} >= {job["id"], evaluation["id"]}  # an ordinary job among the others

    # one of its epoch checkpoints (its weights after epoch 1), and the base model as it is
    step = int(next(a["name"] for a in job["artifacts"] if a["name"].startswith("checkpoints/")).split("/")[1][5:])
    at_step = http.post("/v1/evaluations", json={"file": valid, "job_id": job["id"], "checkpoint_step": step})
    assert at_step.status_code == 201, at_step.text
    base = http.post("/v1/evaluations", json={"file": valid, "model": str(bert), "task": "classification"})
    assert base.status_code == 201, base.text
    checkpoint, untrained = finished(redis, at_step.json()["id"]), finished(redis, base.json()["id"])
    assert checkpoint["request"]["checkpoint_step"] == step
    print(f"checkpoint {step}: {checkpoint['results']['final']}\nbase model: {untrained['results']['final']}")
    assert checkpoint["results"]["final"]["eval_loss"] != pytest.approx(final["eval_loss"], rel=1e-6)
    assert untrained["results"]["final"]["f1"] <= final["f1"]


def test_what_cannot_be_evaluated_is_a_4xx_naming_the_field(http, redis, model_root: Path) -> None:  # type: ignore[no-untyped-def]
    valid = upload(http, jsonl(ROWS["text_label"] * 4)).json()["id"]
    request = JobCreate(model=str(model_root / "tiny-bert"), task=Task.classification, training_file=valid,
                        method=LoraMethod(r=4))  # fmt: skip
    artifacts = [{"name": "checkpoints/step-4/adapter/adapter_model.safetensors", "bytes": 1, "sha256": "0" * 64,
                  "created_at": 0}]  # fmt: skip
    done = create_job(redis, request, status="succeeded", artifacts=artifacts)
    running = create_job(redis, request, status="running")
    elsewhere = create_job(redis, request, tenant="another", status="succeeded")

    def evaluate(**body: Any) -> Any:
        return http.post("/v1/evaluations", json={"file": valid, **body})

    assert_error(evaluate(job_id=running), 409, "parent_job_not_succeeded", "job_id")
    assert_error(evaluate(job_id=elsewhere), 404, "job_not_found", "job_id")  # another tenant's: not found here
    assert_error(evaluate(job_id=done, checkpoint_step=5), 404, "checkpoint_not_found", "checkpoint_step")
    assert_error(evaluate(file="file-" + "0" * 20, job_id=done), 404, "file_not_found", "file")
    assert_error(evaluate(job_id=done, model="other"), 422, "validation_error", "model")
    assert_error(evaluate(), 422, "validation_error", "model")
    assert_error(evaluate(model="m", checkpoint_step=4), 422, "validation_error", "checkpoint_step")
    assert_error(evaluate(model="m", group_field="group"), 422, "validation_error", "group_field")
    assert_error(evaluate(job_id=done, checkpoint_step=0), 422, "validation_error", "checkpoint_step")
    text = upload(http, jsonl(ROWS["text"] * 2)).json()["id"]
    assert_error(evaluate(file=text, job_id=done), 422, "incompatible_file", "file")
    assert evaluate(job_id=done, checkpoint_step=4).status_code == 201
    # the same fields on POST /v1/jobs
    body = {"model": "m", "training_file": valid}
    assert_error(http.post("/v1/jobs", json={**body, "evaluate_only": True}), 422, "validation_error", "evaluate_only")
    bad = http.post("/v1/jobs", json={**body, "validation_file": valid, "checkpoint_step": 3})
    assert_error(bad, 422, "validation_error", "checkpoint_step")
