"""The per-tenant status index: kept with the status itself (create, cancel, a worker's run to success), read by
`GET /v1/jobs?status=X` without reading every job, and backfilled for jobs created before it existed."""

from __future__ import annotations

import statistics
import time
from typing import Any

import pytest

from ftjobs.client.models import JobCreate, JobStatus
from ftjobs.core import keys
from ftjobs.core.records import new_id
from tests.service.conftest import worker_write
from tests.service.tenant_jobs import bearer, finished_job, tiny_job_request, upload_as

KEY = "ftj_index-key-0001"
TENANT = "alpha"


@pytest.fixture
def env(env: dict[str, str]) -> dict[str, str]:
    return {**env, "FTJOBS_API_KEYS": f"{KEY}:{TENANT}"}


def indexed_under(redis: Any, tenant: str, job_id: str) -> tuple[str | None, set[str]]:
    """(the job's status, the statuses whose index holds it), read in one transaction."""
    pipe = redis.pipeline(transaction=True)
    pipe.hget(keys.job_key(tenant, job_id), "status")
    for status in JobStatus:
        pipe.zscore(keys.status_index_key(tenant, status), job_id)
    raw, *scores = pipe.execute()
    found = {s.value for s, score in zip(JobStatus, scores, strict=True) if score is not None}
    return (raw.decode().strip('"') if raw else None), found


def assert_indexed(redis: Any, job_id: str, status: str, tenant: str = TENANT) -> None:
    assert indexed_under(redis, tenant, job_id) == (status, {status})


def listed(http: Any, status: str, limit: int = 100, headers: Any = None) -> list[str]:
    """Every job id of `GET /v1/jobs?status=...`, following the cursor."""
    ids: list[str] = []
    after = None
    while True:
        params = {"status": status, "limit": limit, **({"after": after} if after else {})}
        page = http.get("/v1/jobs", params=params, headers=headers).json()
        ids += [j["id"] for j in page["data"]]
        assert all(j["status"] == status for j in page["data"])
        if not page["has_more"]:
            return ids
        after = page["last_id"]


def test_index_follows_every_transition(http, redis, worker, tiny_causal_lm):  # type: ignore[no-untyped-def]
    auth = bearer(KEY)
    train = upload_as(http, KEY, [{"prompt": "a", "completion": " b"}] * 8)
    pending = http.post("/v1/jobs", json={"model": "nowhere/model", "training_file": train}, headers=auth).json()
    assert_indexed(redis, pending["id"], "validating_files")
    assert http.post(f"/v1/jobs/{pending['id']}/cancel", headers=auth).json()["status"] == "cancelled"
    assert_indexed(redis, pending["id"], "cancelled")

    job = finished_job(http, KEY, tiny_causal_lm, worker)  # validating_files -> queued -> running -> succeeded
    assert_indexed(redis, job["id"], "succeeded")
    assert listed(http, "succeeded", headers=auth) == [job["id"]]
    assert listed(http, "cancelled", headers=auth) == [pending["id"]]
    for status in ("validating_files", "queued", "running", "failed"):
        assert listed(http, status, headers=auth) == []

    # Watched while a second job runs: never in two indexes, never under a status it does not have.
    request = tiny_job_request(tiny_causal_lm, job["training_file"], job["validation_file"])
    second = http.post("/v1/jobs", json=request, headers=auth).json()["id"]
    seen: list[str] = []
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        status, under = indexed_under(redis, TENANT, second)
        assert under == {status}, (status, under)
        if not seen or seen[-1] != status:
            seen.append(str(status))
        if status in ("succeeded", "failed", "cancelled"):
            break
        time.sleep(0.02)
    assert seen[0] == "validating_files" and "running" in seen and seen[-1] == "succeeded", seen


def make_jobs(store: Any, tenant: str, n: int) -> list[str]:
    """`n` jobs created as the API creates them (Store.create_job), oldest first."""
    request = JobCreate(model="m", training_file="file-" + "0" * 20)
    ids = [new_id("ftjob-") for _ in range(n)]
    for job_id in ids:
        store.create_job(tenant, request, job_id, queue="q")
    return ids


def commands_for(redis: Any, call: Any) -> dict[str, int]:
    """Redis commands (by name) that one call makes, from INFO commandstats."""
    redis.config_resetstat()
    call()
    stats = redis.info("commandstats")
    return {k.removeprefix("cmdstat_"): v["calls"] for k, v in stats.items() if k not in ("cmdstat_config",)}


def test_filtered_list_of_350_jobs_reads_only_its_page(http, app, redis):  # type: ignore[no-untyped-def]
    auth = bearer(KEY)
    ids = make_jobs(app.state.store, TENANT, 350)
    running = ids[10:13]  # three old jobs, moved on the way a worker does
    for job_id in running:
        for before, after in (("validating_files", "queued"), ("queued", "running")):
            worker_write(redis, {"tenant": TENANT, "id": job_id, "attempt": None}, before, {"status": after})
    page = http.get("/v1/jobs", params={"status": "running", "limit": 1}, headers=auth).json()
    assert [j["id"] for j in page["data"]] == [running[-1]] and page["has_more"]
    assert listed(http, "running", limit=1, headers=auth) == running[::-1]
    waiting = [i for i in ids if i not in running][::-1]  # newest first
    assert listed(http, "validating_files", headers=auth) == waiting

    url = "/v1/jobs?status=running&limit=1"
    used = commands_for(redis, lambda: http.get(url, headers=auth))
    assert used.get("hgetall", 0) <= 2, used  # the page (+1 to know has_more), not 350 records
    assert sum(used.values()) < 20, used
    unfiltered = commands_for(redis, lambda: http.get("/v1/jobs?limit=1", headers=auth))
    timings = {}
    for name, target in (("filtered", url), ("unfiltered", "/v1/jobs?limit=1")):
        samples = []
        for _ in range(15):
            start = time.perf_counter()
            assert http.get(target, headers=auth).status_code == 200
            samples.append(time.perf_counter() - start)
        timings[name] = statistics.median(samples)
    print(f"350 jobs: {url} {timings['filtered'] * 1000:.1f} ms, {sum(used.values())} Redis commands; "
          f"unfiltered {timings['unfiltered'] * 1000:.1f} ms, {sum(unfiltered.values())} commands")


def test_jobs_from_before_the_index_are_backfilled(make_client, http, app, redis):  # type: ignore[no-untyped-def]
    ids = make_jobs(app.state.store, TENANT, 30)
    worker_write(redis, {"tenant": TENANT, "id": ids[0], "attempt": None}, "validating_files", {"status": "queued"})
    # An older deployment: no index at all, and no marker saying it was filled.
    for key in redis.scan_iter(match=keys.status_index_key(TENANT, "*")):
        redis.delete(key)
    redis.delete(keys.STATUS_INDEX_BACKFILLED_KEY)

    tc = make_client()  # a fresh API process: it fills the index once, on first use
    auth = bearer(KEY)
    assert listed(tc, "queued", headers=auth) == [ids[0]]
    assert listed(tc, "validating_files", headers=auth) == ids[1:][::-1]
    assert redis.exists(keys.STATUS_INDEX_BACKFILLED_KEY)
    for job_id in ids[:3]:
        _, under = indexed_under(redis, TENANT, job_id)
        assert len(under) == 1
    assert tc.app.state.store.active_jobs(TENANT) == 30  # max_active_jobs counts them too
    # Running it again (another replica, a restart cut short) changes nothing.
    assert tc.app.state.store.backfill_status_index() == 0
