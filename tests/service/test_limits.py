"""Per-tenant limits from a real tenants file, over a real Redis: each one a 429 naming the limit, with
Retry-After and x-ratelimit-* headers; one tenant's 429 never touches another tenant."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from ftjobs.core import keys
from ftjobs.core.tenants import key_hash
from ftjobs.service.limits import seconds_to_utc_midnight, utc_day
from tests.service.conftest import ROWS, assert_error, jsonl, upload
from tests.service.tenant_jobs import bearer

KEY_A, KEY_B = "ftj_alpha-limits-key", "ftj_beta-limits-key"
A, B = bearer(KEY_A), bearer(KEY_B)


def tenants_toml(alpha_limits: str) -> str:
    return (
        f"[tenants.alpha]\n{alpha_limits}\n"
        f'[[tenants.alpha.keys]]\nsha256 = "{key_hash(KEY_A)}"\n'
        f'[[tenants.beta.keys]]\nsha256 = "{key_hash(KEY_B)}"\n'
    )


@pytest.fixture
def with_limits(make_client, tmp_path):  # type: ignore[no-untyped-def]
    """An app whose tenant alpha has the given limits (TOML lines) and beta the deployment defaults."""

    def make(alpha_limits: str) -> Any:
        path = tmp_path / "tenants.toml"
        path.write_text(tenants_toml(alpha_limits))
        return make_client(tenants_file=path)

    return make


def assert_429(response: httpx.Response, code: str, limit_name: str, limit: int) -> dict[str, Any]:
    error = assert_error(response, 429, code, param=limit_name)
    assert limit_name in error["message"]
    assert int(response.headers["retry-after"]) >= 1
    assert response.headers["x-ratelimit-limit"] == str(limit)
    assert response.headers["x-ratelimit-remaining"] == "0"
    assert int(response.headers["x-ratelimit-reset"]) >= 1
    return error


def test_request_rate_per_tenant(with_limits, make_client):  # type: ignore[no-untyped-def]
    tc = with_limits("requests_per_second = 0.05\nburst = 3")  # one request per 20 s after a burst of 3
    for remaining in (2, 1, 0):
        response = tc.get("/v1/jobs", headers=A)
        assert response.status_code == 200, response.text
        assert response.headers["x-ratelimit-limit"] == "3"
        assert response.headers["x-ratelimit-remaining"] == str(remaining)
        assert int(response.headers["x-ratelimit-reset"]) >= 1
    refused = tc.get("/v1/jobs", headers=A)
    assert_429(refused, "rate_limited", "requests_per_second", 3)
    assert 1 <= int(refused.headers["retry-after"]) <= 20
    # Refused before the body: even a malformed one.
    malformed = tc.post("/v1/jobs", content=b"{not json", headers={**A, "Content-Type": "application/json"})
    assert_429(malformed, "rate_limited", "requests_per_second", 3)
    # Another replica over the same Redis shares alpha's bucket; beta is untouched (the defaults).
    other_replica = make_client(tenants_file=tc.app.state.settings.tenants_file)
    assert_429(other_replica.get("/v1/files", headers=A), "rate_limited", "requests_per_second", 3)
    for _ in range(10):
        response = tc.get("/v1/jobs", headers=B)
        assert response.status_code == 200, response.text
    assert int(response.headers["x-ratelimit-remaining"]) > 0
    for _ in range(5):  # probes are never limited
        health = tc.get("/healthz")
        assert health.status_code == 200 and "x-ratelimit-limit" not in health.headers


def test_max_active_jobs(with_limits, model_path):  # type: ignore[no-untyped-def]
    tc = with_limits("max_active_jobs = 2")
    file_a = upload(tc, jsonl(ROWS["text"]), headers=A).json()["id"]
    file_b = upload(tc, jsonl(ROWS["text"]), headers=B).json()["id"]
    body = {"model": model_path, "training_file": file_a}
    first = tc.post("/v1/jobs", json=body, headers={**A, "Idempotency-Key": "first"})
    assert first.status_code == 201, first.text
    assert tc.post("/v1/jobs", json=body, headers=A).status_code == 201
    refused = tc.post("/v1/jobs", json=body, headers={**A, "Idempotency-Key": "third"})
    assert_429(refused, "quota_exceeded", "max_active_jobs", 2)
    assert len(tc.get("/v1/jobs", headers=A).json()["data"]) == 2  # nothing was created
    # A replay of a job already created is no new job; beta is untouched.
    replay = tc.post("/v1/jobs", json=body, headers={**A, "Idempotency-Key": "first"})
    assert replay.status_code == 200 and replay.json()["id"] == first.json()["id"]
    for _ in range(3):
        assert tc.post("/v1/jobs", json={**body, "training_file": file_b}, headers=B).status_code == 201
    # A finished (here: cancelled) job frees its place; the refused key was released, so it works now.
    assert tc.post(f"/v1/jobs/{first.json()['id']}/cancel", headers=A).status_code == 200
    again = tc.post("/v1/jobs", json=body, headers={**A, "Idempotency-Key": "third"})
    assert again.status_code == 201, again.text
    assert_429(tc.post("/v1/jobs", json=body, headers=A), "quota_exceeded", "max_active_jobs", 2)


def test_max_files_before_the_body(with_limits):  # type: ignore[no-untyped-def]
    tc = with_limits("max_files = 1")
    assert upload(tc, jsonl(ROWS["text"]), headers=A).status_code == 201
    assert_429(upload(tc, jsonl(ROWS["text"]), headers=A), "quota_exceeded", "max_files", 1)
    # Refused before the body is read: a malformed file would otherwise be a 422.
    assert_429(upload(tc, b"\xff\xfe not a dataset", headers=A), "quota_exceeded", "max_files", 1)
    assert len(tc.get("/v1/files", headers=A).json()["data"]) == 1
    assert upload(tc, jsonl(ROWS["text"]), headers=B).status_code == 201


def test_max_stored_bytes(with_limits, redis, settings):  # type: ignore[no-untyped-def]
    first = jsonl(ROWS["text"] * 4)
    cap = len(first) + 40
    tc = with_limits(f"max_stored_bytes = {cap}")
    stored = upload(tc, first, headers=A)
    assert stored.status_code == 201 and stored.json()["bytes"] == len(first)
    # Known too large from its Content-Length: refused before the body (garbage that would be a 422).
    big = upload(tc, b"\xff" * 200_000, headers=A)
    assert_429(big, "quota_exceeded", "max_stored_bytes", cap)
    # Small enough to be sent, too large once stored: refused after, and nothing is kept of it.
    before = set(Path(settings.data_dir, "store", "alpha", "files").iterdir())
    assert_429(upload(tc, jsonl(ROWS["text"]), headers=A), "quota_exceeded", "max_stored_bytes", cap)
    assert [f["id"] for f in tc.get("/v1/files", headers=A).json()["data"]] == [stored.json()["id"]]
    assert set(Path(settings.data_dir, "store", "alpha", "files").iterdir()) == before
    assert int(redis.hget(keys.tenant_usage_key("alpha"), "stored_bytes")) == len(first)
    assert upload(tc, first * 3, headers=B).status_code == 201


def test_stored_bytes_of_files_from_before_the_counter(with_limits, redis):  # type: ignore[no-untyped-def]
    """A deployment upgraded with files already stored: the counter starts from their records."""
    tc = with_limits("max_stored_bytes = 10_000")
    sizes = [upload(tc, jsonl(ROWS["text"] * n), headers=A).json()["bytes"] for n in (1, 2)]
    redis.delete(keys.tenant_usage_key("alpha"))
    assert upload(tc, jsonl(ROWS["text"]), headers=A).status_code == 201
    assert int(redis.hget(keys.tenant_usage_key("alpha"), "stored_bytes")) == sum(sizes) + sizes[0]


def test_upload_bytes_per_utc_day(with_limits, redis):  # type: ignore[no-untyped-def]
    content = jsonl(ROWS["text"] * 4)
    cap = len(content) + 10
    tc = with_limits(f"max_upload_bytes_per_day = {cap}")
    assert upload(tc, content, headers=A).status_code == 201
    day = keys.upload_day_key("alpha", utc_day())
    assert int(redis.get(day)) == len(content)  # counted once stored, in a key that expires
    assert 0 < redis.ttl(day) <= keys.UPLOAD_DAY_TTL_S
    # There was room left when it was sent; the bytes stored past the cap are counted, and the next upload waits.
    assert upload(tc, content, headers=A).status_code == 201
    refused = upload(tc, jsonl(ROWS["text"]), headers=A)
    assert_429(refused, "quota_exceeded", "max_upload_bytes_per_day", cap)
    assert abs(int(refused.headers["retry-after"]) - seconds_to_utc_midnight()) <= 5  # the next UTC day
    assert upload(tc, content, headers=B).status_code == 201
    assert json.loads(redis.get(keys.upload_day_key("beta", utc_day()))) == len(content)


def test_upload_too_large_for_the_day_is_refused_before_the_body(with_limits):  # type: ignore[no-untyped-def]
    tc = with_limits("max_upload_bytes_per_day = 1000")
    assert_429(upload(tc, b"\xff" * 200_000, headers=A), "quota_exceeded", "max_upload_bytes_per_day", 1000)
    assert upload(tc, jsonl(ROWS["text"]), headers=A).status_code == 201
