"""Request checks of the safeguard fields at POST /v1/jobs: 4xx bodies naming the field."""

from __future__ import annotations

from tests.service.conftest import ROWS, assert_error, jsonl, upload


def test_reference_file_must_exist_and_fit_the_task(http, create_job, training_file):  # type: ignore[no-untyped-def]
    missing = create_job(reference_file="file-" + "2" * 20, hyperparameters={"ewc_lambda": 1.0})
    assert_error(missing, 404, "file_not_found", param="reference_file")
    labelled = upload(http, jsonl(ROWS["text_label"])).json()["id"]
    assert_error(create_job(reference_file=labelled), 422, "incompatible_file", param="reference_file")
    ok = create_job(reference_file=training_file, hyperparameters={"ewc_lambda": 1.0, "replay_ratio": 0.5})
    assert ok.status_code == 201, ok.text
    job = ok.json()
    assert job["resolved_hyperparameters"]["ewc_lambda"] == 1.0 and job["reference_file"] == training_file


def test_safeguards_need_their_data(create_job):  # type: ignore[no-untyped-def]
    no_validation = create_job(hyperparameters={"early_stopping": {}, "validation_split": 0})
    error = assert_error(no_validation, 422, "validation_error", param="hyperparameters")
    assert "early_stopping" in error["message"]
    error = assert_error(
        create_job(hyperparameters={"ewc_lambda": 2.0}), 422, "validation_error", param="hyperparameters"
    )
    assert "reference_file" in error["message"]
    assert_error(
        create_job(hyperparameters={"lr_scheduler": "exotic"}),
        422,
        "validation_error",
        param="hyperparameters.lr_scheduler",
    )
    bad_patience = create_job(hyperparameters={"early_stopping": {"patience": 0}})
    assert_error(bad_patience, 422, "validation_error", param="hyperparameters.early_stopping.patience")
    assert_error(create_job(group_field="group"), 422, "validation_error", param="group_field")
