"""POST /v1/jobs: model-based augmentation needs the model(s) it names."""

from __future__ import annotations

from tests.service.conftest import assert_error


def test_paraphrase_without_augment_model_is_422(create_job):  # type: ignore[no-untyped-def]
    error = assert_error(
        create_job(data={"augment": ["paraphrase"]}), 422, "validation_error", param="data.augment_model"
    )
    assert "augment_model" in error["message"]
    back = create_job(data={"augment": ["back_translate"], "augment_model": "m"})
    assert_error(back, 422, "validation_error", param="data.augment_back_model")
    no_slot = create_job(data={"augment": ["paraphrase"], "augment_model": "m", "augment_prompt": "no slot"})
    assert_error(no_slot, 422, "validation_error", param="data.augment_prompt")
    assert_error(create_job(data={"augment_max_rows": 0}), 422, "validation_error", param="data.augment_max_rows")
