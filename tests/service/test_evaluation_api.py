"""The evaluation and task fields of POST /v1/jobs: seq2seq files, generation/sample limits, integrations."""

from __future__ import annotations

from tests.service.conftest import ROWS, assert_error, jsonl, upload


def test_seq2seq_needs_source_target_files(http, create_job):  # type: ignore[no-untyped-def]
    error = assert_error(create_job(task="seq2seq"), 422, "incompatible_file", param="training_file")
    assert "source_target" in error["message"]
    pairs = upload(http, jsonl(ROWS["source_target"])).json()["id"]
    assert_error(create_job(training_file=pairs), 422, "incompatible_file", param="training_file")
    response = create_job(training_file=pairs, task="seq2seq", eval_generation_limit=16, eval_samples=4)
    assert response.status_code == 201, response.text
    job = response.json()
    assert job["task"] == "seq2seq"


def test_evaluation_fields_are_range_checked(create_job):  # type: ignore[no-untyped-def]
    assert_error(create_job(eval_samples=101), 422, "validation_error", param="eval_samples")
    assert_error(create_job(eval_generation_limit=-1), 422, "validation_error", param="eval_generation_limit")
    assert_error(create_job(integrations=["comet"]), 422, "validation_error", param="integrations.0")
    bad = create_job(hyperparameters={"train_on_inputs": "sometimes"})
    assert_error(bad, 422, "validation_error", param="hyperparameters.train_on_inputs")
    assert create_job(integrations=["mlflow"], hyperparameters={"train_on_inputs": True}).status_code == 201
