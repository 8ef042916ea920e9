"""One error body everywhere: our errors, validation, unknown routes, Redis outages and unexpected faults."""

from __future__ import annotations

from pathlib import Path

from ftjobs.core.storage import Storage
from ftjobs.launch.embedded import free_port
from ftjobs.service.errors import (
    FileNotFound,
    IdempotencyKeyReused,
    JobNotCancellable,
    JobNotFound,
    RedisUnavailable,
    ServiceError,
    error_responses,
)
from tests.service.conftest import ROWS, assert_error, jsonl, upload


def test_codes_are_the_snake_cased_class_names():  # type: ignore[no-untyped-def]
    assert JobNotFound.code() == "job_not_found" and JobNotFound.status_code == 404
    assert JobNotCancellable.code() == "job_not_cancellable" and JobNotCancellable.status_code == 409
    assert IdempotencyKeyReused.code() == "idempotency_key_reused"
    assert (
        RedisUnavailable().headers == {"Retry-After": "5"} and RedisUnavailable.type == "service_unavailable"
    )
    body = FileNotFound("No file 'x'.", param="training_file").body().model_dump(exclude_unset=True)
    assert body == {
        "error": {
            "code": "file_not_found",
            "message": "No file 'x'.",
            "param": "training_file",
            "type": "invalid_request_error",
        }
    }
    responses = error_responses(JobNotFound, FileNotFound, JobNotCancellable)
    assert sorted(responses) == [404, 409] and "`job_not_found`" in responses[404]["description"]


def test_redis_down_is_503_with_retry_after(make_client, settings):  # type: ignore[no-untyped-def]
    down = make_client(redis_url=f"redis://127.0.0.1:{free_port()}/0")  # the app still starts
    for response in (
        down.get("/v1/jobs"),
        down.get("/v1/jobs/ftjob-" + "0" * 20),
        down.post("/v1/files", files={"file": ("t.jsonl", jsonl(ROWS["text"]))}),
        down.get("/readyz"),
    ):
        error = assert_error(response, 503, "redis_unavailable")
        assert error["type"] == "service_unavailable"
        assert response.headers["retry-after"] == "5"
    root = Path(Storage(settings.storage_url).root)
    assert not root.exists() or not [p for p in root.rglob("*") if p.is_file()]  # the upload left nothing
    assert down.get("/healthz").json()["status"] == "ok"  # liveness does not depend on Redis


def test_readyz_pings_redis(http):  # type: ignore[no-untyped-def]
    response = http.get("/readyz")
    assert response.status_code == 200
    assert response.json()["status"] == "ok" and response.json()["redis"] is True


def test_unknown_route_and_method_are_error_bodies(http):  # type: ignore[no-untyped-def]
    assert_error(http.get("/v2/nothing"), 404, "not_found", param=None)
    response = http.delete("/v1/jobs")
    assert_error(response, 405, "method_not_allowed")
    assert response.headers["allow"] == "POST" or "GET" in response.headers["allow"]


def test_unexpected_errors_are_generic_500s(app, http, caplog):  # type: ignore[no-untyped-def]
    def explode() -> None:
        raise RuntimeError("secret internals at /srv/ftjobs")

    app.add_api_route("/boom", explode)
    response = http.get("/boom")
    error = assert_error(response, 500, "internal_error", param=None)
    assert error["type"] == "api_error" and "secret" not in response.text
    assert "secret internals" in caplog.text  # logged server-side only


def test_service_errors_from_routes_keep_their_headers(app, http):  # type: ignore[no-untyped-def]
    def teapot() -> None:
        raise ServiceError("Short and stout.", param="spout", headers={"X-Why": "tea"})

    app.add_api_route("/teapot", teapot)
    response = http.get("/teapot")
    assert assert_error(response, 400, "service_error", param="spout")["message"] == "Short and stout."
    assert response.headers["x-why"] == "tea"


def test_validation_errors_name_query_and_header_params(http):  # type: ignore[no-untyped-def]
    error = assert_error(
        http.get("/v1/jobs", params={"limit": "many"}), 422, "validation_error", param="limit"
    )
    assert error["message"].startswith("limit: Input should be a valid integer")
    assert upload(http, jsonl(ROWS["text"])).status_code == 201


def test_oversized_json_bodies_are_413_error_bodies(http):  # type: ignore[no-untyped-def]
    huge = b'{"model": "' + b"m" * 2_000_000 + b'"}'
    headers = {"content-type": "application/json"}
    response = http.post("/v1/jobs", content=huge, headers=headers)
    assert_error(response, 413, "request_entity_too_large")

    def chunked():  # type: ignore[no-untyped-def]
        yield huge[:1_000_000]
        yield huge[1_000_000:]

    assert_error(http.post("/v1/jobs", content=chunked(), headers=headers), 413, "request_entity_too_large")
