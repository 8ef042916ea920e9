"""Retention (core/retention.py): a finished job's events and metrics move to the store and read back the same.

Real Redis, real worker processes, a real tiny job; the API in process (`http`) reads them before and after."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis as redis_lib

from ftjobs.core import keys
from ftjobs.core.retention import ARCHIVED_FIELD, Retention, archive_path
from ftjobs.core.storage import Storage
from ftjobs.core.tenants import key_hash
from tests.conftest import WorkerProcess
from tests.jobs.helpers import eventually
from tests.service.conftest import ROWS, jsonl, upload
from tests.service.tenant_jobs import tiny_job_request

TENANT = "default"
KEY = "sk-retention-0123456789abcdef"
RETENTION_S = 10  # long enough to read everything from Redis first, on a busy machine


@pytest.fixture
def env(env: dict[str, str], tmp_path: Path) -> dict[str, str]:
    """Hundreds of reads in a few seconds (every page size, before and after): more than the default rate allows."""
    tenants = tmp_path / "tenants.toml"
    tenants.write_text(
        f'[defaults]\nrequests_per_second = 100000\n\n[[tenants.{TENANT}.keys]]\nsha256 = "{key_hash(KEY)}"\n'
    )
    return {**env, "FTJOBS_TENANTS_FILE": str(tenants)}


@pytest.fixture
def http(http):  # type: ignore[no-untyped-def]
    """The app's client with the tenant's key on every request (a tenants file turns auth on)."""
    http.headers.update({"Authorization": f"Bearer {KEY}"})
    return http


def pages(http: httpx.Client, url: str, limit: int) -> list[dict[str, Any]]:
    """Every item of a list, page by page (`after` = the previous page's last id)."""
    items: list[dict[str, Any]] = []
    params: dict[str, Any] = {"limit": limit}
    while True:
        page = http.get(url, params=params).json()
        items += page["data"]
        if not page["has_more"]:
            return items
        params["after"] = page["last_id"]


def openai_events(http: httpx.Client, job_id: str, limit: int) -> list[dict[str, Any]]:
    """The OpenAI events list, newest first, page by page."""
    return pages(http, f"/v1/fine_tuning/jobs/{job_id}/events", limit)


def streamed(http: httpx.Client, job_id: str, after: str | None = None) -> list[dict[str, Any]]:
    """The events as Server-Sent Events (a finished job's stream ends after its backlog)."""
    params = {"stream": "true", **({"after": after} if after else {})}
    body = http.get(f"/v1/jobs/{job_id}/events", params=params).text
    return [json.loads(line[5:]) for line in body.splitlines() if line.startswith("data:")]


def readings(http: httpx.Client, job_id: str) -> dict[str, Any]:
    """Everything a user can read of a job's streams (several page sizes, both APIs), and the job itself."""
    return {
        "job": http.get(f"/v1/jobs/{job_id}").json(),
        "events": pages(http, f"/v1/jobs/{job_id}/events", 1000),
        "events_by_3": pages(http, f"/v1/jobs/{job_id}/events", 3),
        "metrics": pages(http, f"/v1/jobs/{job_id}/metrics", 1000),
        "metrics_by_2": pages(http, f"/v1/jobs/{job_id}/metrics", 2),
        "openai_by_4": openai_events(http, job_id, 4),
        "streamed": streamed(http, job_id),
        "streamed_after_2": streamed(http, job_id, pages(http, f"/v1/jobs/{job_id}/events", 1000)[1]["id"]),
    }


def stream_keys(job_id: str) -> list[str]:
    return [keys.events_key(TENANT, job_id), keys.metrics_key(TENANT, job_id)]


def test_a_real_workers_loop_archives_a_finished_job_and_reads_stay_the_same(  # type: ignore[no-untyped-def]
    http, redis, env, tmp_path, tiny_causal_lm
):
    # Two workers whose reconcilers archive what ended RETENTION_S ago (a pass every second: stale_after_s / 4).
    short = {**env, "FTJOBS_RETENTION_S": str(RETENTION_S), "FTJOBS_STALE_AFTER_S": "4"}
    workers = [WorkerProcess(short, tmp_path / f"w{i}.log") for i in range(2)]
    try:
        rows = ROWS["prompt_completion"] * 8
        train = upload(http, jsonl(rows)).json()["id"]
        valid = upload(http, jsonl(rows[:4]), filename="valid.jsonl").json()["id"]
        job_id = http.post("/v1/jobs", json=tiny_job_request(tiny_causal_lm, train, valid)).json()["id"]
        done = eventually(lambda: http.get(f"/v1/jobs/{job_id}").json()["status"] == "succeeded", timeout=300)
        logs = "".join(w.output()[-2000:] for w in workers)
        assert done, (http.get(f"/v1/jobs/{job_id}").json(), logs)
        assert redis.zscore(keys.RETENTION_DUE_KEY, f"{TENANT}|{job_id}") is not None  # due from when it ended
        before = readings(http, job_id)
        assert all(redis.exists(k) for k in stream_keys(job_id)), "archived before the retention period"
        assert len(before["metrics"]) >= 2 and len(before["events"]) > 3  # pages of several items each
        archived = eventually(lambda: redis.hexists(keys.job_key(TENANT, job_id), ARCHIVED_FIELD), timeout=120)
        assert archived, workers[0].output()[-3000:]
    finally:
        for w in workers:
            w.stop()
    assert not any(redis.exists(k) for k in stream_keys(job_id))  # gone from Redis
    assert redis.zcard(keys.RETENTION_DUE_KEY) == 0
    storage = Storage(f"file://{Path(env['FTJOBS_DATA_DIR']).resolve()}/store")
    assert storage.exists(archive_path(TENANT, job_id, "events"))
    assert readings(http, job_id) == before  # the same answers, from the store now


def test_a_job_not_finished_is_never_archived(http, redis, env, settings):  # type: ignore[no-untyped-def]
    training = upload(http, jsonl(ROWS["prompt_completion"] * 4)).json()["id"]
    job_id = http.post("/v1/jobs", json={"model": "tiny", "training_file": training}).json()["id"]  # no worker
    member = f"{TENANT}|{job_id}"
    redis.zadd(keys.RETENTION_DUE_KEY, {member: 0})  # as if it had ended long ago
    retention = Retention(redis, Storage(settings.storage_url), retention_s=1)
    assert retention.sweep() == 0
    assert redis.exists(keys.events_key(TENANT, job_id)) and not redis.hexists(
        keys.job_key(TENANT, job_id), ARCHIVED_FIELD
    )
    assert redis.zscore(keys.RETENTION_DUE_KEY, member) is None  # dropped: it is made due again when it ends
    # It ends (a cancel through the API): due again, and archived once past the retention period, not before.
    assert http.post(f"/v1/jobs/{job_id}/cancel").status_code == 200
    assert redis.zscore(keys.RETENTION_DUE_KEY, member) is not None
    assert retention.sweep() == 0  # ended less than a second ago
    assert retention.sweep(now=time.time() + 5) == 1
    assert not redis.exists(keys.events_key(TENANT, job_id))
    statuses = [e["data"].get("status") for e in pages(http, f"/v1/jobs/{job_id}/events", 1)]
    assert statuses == ["validating_files", "cancelled"]


def test_two_archivers_at_once_archive_each_job_once(http, redis, settings):  # type: ignore[no-untyped-def]
    training = upload(http, jsonl(ROWS["prompt_completion"] * 4)).json()["id"]
    job_ids = [http.post("/v1/jobs", json={"model": "tiny", "training_file": training}).json()["id"] for _ in range(6)]
    for i, job_id in enumerate(job_ids):
        point = {
            "step": 1,
            "epoch": 0.5,
            "split": "train",
            "created_at": time.time(),
            "values": {"loss": 1.0 / (i + 1)},
        }
        redis.xadd(keys.metrics_key(TENANT, job_id), {keys.STREAM_FIELD: json.dumps(point)})
        assert http.post(f"/v1/jobs/{job_id}/cancel").status_code == 200
    before = {job_id: readings(http, job_id) for job_id in job_ids}
    storage = Storage(settings.storage_url)
    counts: list[int] = []
    start = threading.Barrier(4)

    def archiver() -> None:
        conn = redis_lib.Redis(connection_pool=redis.connection_pool)
        start.wait()
        counts.append(sum(Retention(conn, storage, 1).sweep(now=time.time() + 5) for _ in range(3)))

    threads = [threading.Thread(target=archiver) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sum(counts) == len(job_ids)  # each job once, whoever held the lock
    for job_id in job_ids:
        assert not any(redis.exists(k) for k in stream_keys(job_id))
        assert readings(http, job_id) == before[job_id]
