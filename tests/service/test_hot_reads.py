"""The polled reads on the event loop (service/reads.py): a job GET answered in `AuthFirst` (before routing) and the
one-round-trip pages give what the routes gave: the same documents, rate headers, request ids, metrics labels."""

from __future__ import annotations

from ftjobs.client.models import EventList, FileList, Job, JobList, MetricList
from ftjobs.core import keys
from ftjobs.core.records import event_entry
from ftjobs.core.tenants import key_hash
from tests.service.conftest import ROWS, jsonl, upload
from tests.service.tenant_jobs import bearer

KEY = "ftj_hot-reads-key"
AUTH = bearer(KEY)


def test_hot_job_get_and_pages_match_the_sync_store(make_client, tmp_path, model_path):  # type: ignore[no-untyped-def]
    tenants = tmp_path / "tenants.toml"
    tenants.write_text(f'[tenants.hot]\nrequests_per_second = 1000\n[[tenants.hot.keys]]\nsha256 = "{key_hash(KEY)}"\n')
    tc = make_client(tenants_file=tenants)
    store = tc.app.state.store
    file_id = upload(tc, jsonl(ROWS["prompt_completion"] * 4), headers=AUTH).json()["id"]
    created = tc.post("/v1/jobs", json={"model": model_path, "training_file": file_id}, headers=AUTH)
    assert created.status_code == 201, created.text
    job_id = created.json()["id"]
    store.redis.xadd(keys.events_key("hot", job_id), {keys.STREAM_FIELD: event_entry("hello", data={"n": 1})})

    got = tc.get(f"/v1/jobs/{job_id}", headers={**AUTH, "X-Request-ID": "req-hot-1"})
    assert got.status_code == 200 and got.headers["content-type"] == "application/json"
    assert Job.model_validate_json(got.content) == store.get_job("hot", job_id)
    assert got.headers["x-request-id"] == "req-hot-1"
    assert {"x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset"} <= set(got.headers)

    assert JobList.model_validate_json(tc.get("/v1/jobs?limit=1", headers=AUTH).content) == store.list_jobs(
        "hot", None, 1
    )
    events = tc.get(f"/v1/jobs/{job_id}/events", headers=AUTH)
    assert EventList.model_validate_json(events.content) == store.events("hot", job_id, None, 100)
    assert EventList.model_validate_json(events.content).data[-1].message == "hello"
    assert MetricList.model_validate_json(tc.get(f"/v1/jobs/{job_id}/metrics", headers=AUTH).content).data == []
    assert FileList.model_validate_json(tc.get("/v1/files", headers=AUTH).content) == store.list_files("hot", None, 20)

    missing = tc.get("/v1/jobs/ftjob-000000000000aaaaaaaa", headers=AUTH)  # not found: the route's 404
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "job_not_found"
    assert tc.get(f"/v1/jobs/{job_id}").status_code == 401  # the key first, as ever
    scraped = tc.get("/metrics").text
    assert 'route="/v1/jobs/{job_id}",status="200"' in scraped.replace('method="GET",', "")
