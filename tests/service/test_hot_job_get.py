"""The job GET answered in `AuthFirst` (service/reads.py) over the auto-pipelined client (service/pipelined.py): the
rate and the record in one round trip, a rendered view never stale, 429s and 503s as on every route, a Redis that
restarts (its scripts gone) served again, and concurrent callers each given their own reply."""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path

import pytest
from redis import Redis
from redis.asyncio import Redis as AsyncRedis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ftjobs.client.models import Job, JobCreate, JobList
from ftjobs.core import keys
from ftjobs.core.records import new_id
from ftjobs.core.tenants import TenantLimits, key_hash
from ftjobs.launch.embedded import start_redis
from ftjobs.service.pipelined import PipelinedRedis
from ftjobs.service.reads import AsyncReads
from ftjobs.service.store import Store
from tests.service.conftest import assert_error
from tests.service.tenant_jobs import bearer

KEY_A, KEY_B = "ftj_hot-get-alpha", "ftj_hot-get-beta"
A, B = bearer(KEY_A), bearer(KEY_B)


def tenants_file(path: Path, alpha: str = "") -> Path:
    path.write_text(
        f'[tenants.alpha]\n{alpha}\n[[tenants.alpha.keys]]\nsha256 = "{key_hash(KEY_A)}"\n'
        f'[[tenants.beta.keys]]\nsha256 = "{key_hash(KEY_B)}"\n'
    )
    return path


def new_job(redis: Redis, tenant: str) -> str:
    job_id = new_id("ftjob-")
    Store(redis).create_job(tenant, JobCreate(model="tiny", training_file=new_id("file-")), job_id, queue=None)
    return job_id


def test_rate_record_and_fresh_views(make_client, redis, tmp_path):  # type: ignore[no-untyped-def]
    tc = make_client(tenants_file=tenants_file(tmp_path / "t.toml", "requests_per_second = 0.05\nburst = 4"))
    job_id = new_job(redis, "alpha")
    first = tc.get(f"/v1/jobs/{job_id}", headers=A)
    assert first.status_code == 200 and Job.model_validate_json(first.content).status == "validating_files"
    assert first.headers["x-ratelimit-remaining"] == "3" and first.headers["x-ratelimit-limit"] == "4"
    redis.hset(keys.job_key("alpha", job_id), "status", json.dumps("cancelled"))  # a worker's write
    second = tc.get(f"/v1/jobs/{job_id}", headers=A)
    assert Job.model_validate_json(second.content).status == "cancelled"  # never the view rendered before
    assert second.headers["x-ratelimit-remaining"] == "2"
    listed = JobList.model_validate_json(tc.get("/v1/jobs?limit=5", headers=A).content)
    assert [(j.id, j.status) for j in listed.data] == [(job_id, "cancelled")]
    assert tc.get(f"/v1/jobs/{job_id}", headers=A).status_code == 200
    refused = tc.get(f"/v1/jobs/{job_id}", headers=A)  # the burst is spent: the record is not even read
    error = assert_error(refused, 429, "rate_limited", param="requests_per_second")
    assert error["request_id"] == refused.headers["x-request-id"]
    assert refused.headers["x-ratelimit-remaining"] == "0" and int(refused.headers["retry-after"]) >= 1
    # Another tenant's key, the same id: not found (the route's 404), and its own bucket.
    other = tc.get(f"/v1/jobs/{job_id}", headers=B)
    assert_error(other, 404, "job_not_found")
    assert int(other.headers["x-ratelimit-remaining"]) > 0
    assert tc.get(f"/v1/jobs/{job_id}").status_code == 401
    scraped = tc.get("/metrics").text
    assert 'route="/v1/jobs/{job_id}",status="429"' in scraped.replace('method="GET",', "")


def test_a_restarted_redis_is_503_then_served_again(make_client, tmp_path):  # type: ignore[no-untyped-def]
    server = start_redis(tmp_path / "redis", persist=False)
    try:
        tc = make_client(redis_url=server.url, tenants_file=tenants_file(tmp_path / "t.toml"))
        with Redis.from_url(server.url) as redis:
            job_id = new_job(redis, "alpha")
        assert tc.get(f"/v1/jobs/{job_id}", headers=A).status_code == 200
        server.stop()
        down = tc.get(f"/v1/jobs/{job_id}", headers=A)
        assert_error(down, 503, "redis_unavailable")
        assert down.headers["retry-after"] == "5"
        server = start_redis(tmp_path / "redis", port=server.port, persist=False, password=server.password)
        with Redis.from_url(server.url) as redis:  # a fresh server: no data, no scripts loaded (NOSCRIPT)
            assert_error(tc.get(f"/v1/jobs/{job_id}", headers=A), 404, "job_not_found")
            job_id = new_job(redis, "alpha")
        got = tc.get(f"/v1/jobs/{job_id}", headers=A)
        assert got.status_code == 200 and got.json()["id"] == job_id
    finally:
        server.stop()


def test_pipelined_replies_go_to_their_callers(redis, redis_url):  # type: ignore[no-untyped-def]
    script = "return {KEYS[1], ARGV[1]}"
    job_id = new_job(redis, "alpha")

    async def run() -> None:
        client = AsyncRedis.from_url(redis_url)
        fast = PipelinedRedis.for_client(client)
        assert fast is not None
        sha = client.register_script(script).sha
        reads = AsyncReads(client)
        try:
            # Without a rate limit, the record alone; with one, the verdict and the record; both the sync store's.
            for limits in (TenantLimits(requests_per_second=None), TenantLimits()):
                decision, record = await reads.job_with_rate("alpha", job_id, limits)
                assert (decision is None) == (limits.requests_per_second is None)
                assert Job.model_validate_json(reads.job_json(record)) == Store(redis).get_job("alpha", job_id)
            replies = await asyncio.gather(*(fast.evalsha(sha, script, [f"k{n}"], [n]) for n in range(500)))
            assert replies == [[f"k{n}".encode(), str(n).encode()] for n in range(500)]
            failing = "return redis.error_reply('boom')"  # not loaded yet: NOSCRIPT, then EVAL, then its error
            with pytest.raises(ResponseError, match="boom"):
                await fast.evalsha(client.register_script(failing).sha, failing, [], [])
        finally:
            await fast.aclose()
            await reads.aclose()
            await client.aclose()

    asyncio.run(run())


def test_a_silent_redis_times_out_and_an_absent_one_refuses():  # type: ignore[no-untyped-def]
    async def run() -> None:
        silent = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)  # accepts, never answers
        port = silent.sockets[0].getsockname()[1]
        client = AsyncRedis(host="127.0.0.1", port=port, socket_timeout=0.5)
        fast = PipelinedRedis.for_client(client)
        assert fast is not None
        started = asyncio.get_running_loop().time()
        with pytest.raises(RedisTimeoutError):
            await fast.evalsha("0" * 40, "return 1", [], [])
        assert 0.4 < asyncio.get_running_loop().time() - started < 5
        await fast.aclose()
        silent.close()
        with socket.socket() as s:  # a port nothing listens on
            s.bind(("127.0.0.1", 0))
            free = s.getsockname()[1]
        closed = PipelinedRedis.for_client(AsyncRedis(host="127.0.0.1", port=free, socket_connect_timeout=2))
        assert closed is not None
        with pytest.raises(RedisConnectionError):
            await closed.evalsha("0" * 40, "return 1", [], [])

    asyncio.run(run())
