"""POST /v1/jobs: dedup_threshold belongs to dedup minhash."""

from __future__ import annotations

from tests.service.conftest import assert_error


def test_dedup_threshold_without_minhash_is_422(create_job):  # type: ignore[no-untyped-def]
    near = create_job(data={"dedup": "near", "dedup_threshold": 0.9})
    error = assert_error(near, 422, "validation_error", param="data.dedup_threshold")
    assert "minhash" in error["message"]
    low = create_job(data={"dedup": "minhash", "dedup_threshold": 0.3})
    assert_error(low, 422, "validation_error", param="data.dedup_threshold")
    assert create_job(data={"dedup": "minhash", "dedup_threshold": 0.9}).status_code == 201
