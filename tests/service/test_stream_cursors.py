"""Event and metric cursors: any `<ms>-<seq>` whose parts fit in 64 bits pages; anything else is a 422."""

from __future__ import annotations

import json
import time

import pytest

from ftjobs.core import keys
from ftjobs.service.store import MAX_STREAM_PART, stream_cursor
from tests.service.conftest import assert_error

MAX = str(MAX_STREAM_PART)  # 18446744073709551615 = 2^64-1
KINDS = ("events", "metrics")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    "after",
    [
        "99999999999999999999999-0",
        "0-99999999999999999999999",
        f"{MAX_STREAM_PART + 1}-0",
        f"0-{MAX_STREAM_PART + 1}",
        str(MAX_STREAM_PART + 1),
        "1" * 5000,  # past int()'s 4300-digit limit
    ],
)
def test_out_of_range_cursors_are_422(http, create_job, kind, after):  # type: ignore[no-untyped-def]
    job = create_job().json()
    error = assert_error(
        http.get(f"/v1/jobs/{job['id']}/{kind}", params={"after": after}), 422, "validation_error", param="after"
    )
    assert error["message"] == f"after: each part of a stream id must be at most {MAX} (2^64-1)"
    assert error["type"] == "invalid_request_error"


@pytest.mark.parametrize("kind", KINDS)
def test_malformed_cursors_are_422(http, create_job, kind):  # type: ignore[no-untyped-def]
    job = create_job().json()
    for after in ("x)", "1-", "-1", "1-2-3", "١٢-0", " 1-0"):  # no other scripts' digits either
        response = http.get(f"/v1/jobs/{job['id']}/{kind}", params={"after": after})
        assert_error(response, 422, "validation_error", param="after")


@pytest.mark.parametrize("kind", KINDS)
def test_in_range_cursors_page(http, create_job, redis, kind):  # type: ignore[no-untyped-def]
    job = create_job().json()
    key = (keys.events_key if kind == "events" else keys.metrics_key)("default", job["id"])
    entry = (
        {"created_at": time.time(), "level": "info", "type": "message", "message": "m"}
        if kind == "events"
        else {"step": 1, "epoch": 0.5, "split": "train", "created_at": time.time(), "values": {"loss": 1.0}}
    )
    redis.xadd(key, {keys.STREAM_FIELD: json.dumps(entry)})
    url = f"/v1/jobs/{job['id']}/{kind}"
    everything = http.get(url, params={"after": "0-0"}).json()
    assert everything["data"] and everything["has_more"] is False
    first = everything["data"][0]["id"]
    ms, seq = first.split("-")
    padded = f"{'0' * 5000}{ms}-000{seq}"  # leading zeros do not change the number
    assert http.get(url, params={"after": padded}).json()["data"] == everything["data"][1:]
    assert http.get(url, params={"after": "0"}).json() == everything  # `<ms>` alone is `<ms>-0`
    empty = {"object": "list", "data": [], "has_more": False, "last_id": None}
    for after in (f"{MAX}-{MAX}", f"{MAX}-0", MAX):  # the largest ids: nothing comes after them
        assert http.get(url, params={"after": after}).json() == empty, after
    assert_error(
        http.get("/v1/jobs/ftjob-" + "0" * 20 + f"/{kind}", params={"after": f"{MAX}-{MAX}"}), 404, "job_not_found"
    )


def test_stream_cursor_is_canonical():  # type: ignore[no-untyped-def]
    assert stream_cursor("0") == "0-0" and stream_cursor("007-010") == "7-10"
    assert stream_cursor(f"{MAX}-{MAX}") == f"{MAX}-{MAX}"
    for bad in (f"{MAX_STREAM_PART + 1}", f"1-{MAX_STREAM_PART + 1}", "x", "1-", ""):
        with pytest.raises(ValueError):
            stream_cursor(bad)
