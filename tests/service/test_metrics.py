"""GET /metrics: scraped before and after a real job run by a real worker; the counters move, the output parses with
prometheus_client's own parser, routes are templates, and every API replica reports the same deployment figures."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import yaml
from prometheus_client.parser import text_string_to_metric_families

from ftjobs.client.models import JobStatus, Progress
from ftjobs.core.telemetry import Telemetry
from tests.conftest import REPO
from tests.jobs.helpers import eventually
from tests.service.conftest import jsonl
from tests.service.test_webhooks import Receiver, dispatchers, new_job, receiver  # noqa: F401 (fixtures)
from tests.test_e2e import echo_rows

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(http: httpx.Client, **kw: object) -> Samples:
    """Every sample of GET /metrics, parsed by prometheus_client (a malformed exposition raises)."""
    response = http.get("/metrics", **kw)  # type: ignore[arg-type]
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of the samples named `name` whose labels include `labels` (0 when there is none)."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


def test_a_job_moves_the_counters(http, client, worker, tiny_causal_lm, tmp_path):  # type: ignore[no-untyped-def]
    before = scrape(http)
    assert value(before, "ftjobs_redis_up") == 1

    train = tmp_path / "train.jsonl"
    train.write_text(jsonl(echo_rows(32, seed=1)).decode())
    uploaded = client.files.upload(train)
    job = client.jobs.create(
        model=str(tiny_causal_lm),
        task="causal_lm",
        training_file=uploaded.id,
        method={"type": "lora", "r": 4, "alpha": 8},
        hyperparameters={"n_epochs": 1, "batch_size": 4, "max_seq_length": 32},
    )
    job = client.jobs.wait(job.id, timeout=600)
    assert job.status == JobStatus.succeeded, (job.error, worker.output()[-3000:])
    http.get(f"/v1/jobs/{job.id}/events")
    # the worker's last figures follow its status write: wait for them rather than race them
    assert eventually(lambda: value(scrape(http), "ftjobs_jobs_finished_total", status="succeeded") >= 1, 60)
    after = scrape(http)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("ftjobs_jobs_finished_total", status="succeeded") == 1
    assert moved("ftjobs_jobs", tenant="default", status="succeeded") == 1
    assert moved("ftjobs_job_duration_seconds_count", status="succeeded") == 1
    assert moved("ftjobs_job_duration_seconds_sum", status="succeeded") > 0
    assert moved("ftjobs_job_duration_seconds_bucket", status="succeeded", le="+Inf") == 1
    assert moved("ftjobs_job_time_to_start_seconds_count") == 1
    steps = moved("ftjobs_training_step_seconds_count")
    assert steps >= 1 and moved("ftjobs_training_steps_total") >= steps  # the first step of a run is the baseline
    assert moved("ftjobs_training_tokens_total") > 0
    assert moved("ftjobs_uploads_total") == 1
    assert moved("ftjobs_upload_bytes_total") == uploaded.bytes
    # HTTP by route template: the job's routes counted, its id in no label
    assert moved("ftjobs_http_requests_total", method="POST", route="/v1/jobs") == 1
    assert moved("ftjobs_http_requests_total", method="POST", route="/v1/files", status="201") == 1
    assert moved("ftjobs_http_requests_total", method="GET", route="/v1/jobs/{job_id}", status="200") >= 1
    assert moved("ftjobs_http_requests_total", method="GET", route="/v1/jobs/{job_id}/events", status="200") == 1
    assert moved("ftjobs_http_request_duration_seconds_count", method="POST", route="/v1/jobs") == 1
    assert not [ls for (_, ls) in after if any(job.id in v or uploaded.id in v for _, v in ls)]
    # the worker is alive, registered with RQ, and idle again; no job waits
    assert value(after, "ftjobs_workers", state="idle") >= 1
    assert value(after, "ftjobs_workers", state="busy") == 0
    assert value(after, "ftjobs_queue_jobs") == 0
    assert value(after, "ftjobs_running_attempts") == 0
    assert value(after, "ftjobs_job_gpu_memory_bytes") == 0  # a CPU run exports no GPU figure


def test_queue_depth_and_age_with_no_worker(http, training_file, create_job, settings):  # type: ignore[no-untyped-def]
    """Three jobs of one tenant: one waits in RQ (admission lets one per tenant through), two pend in its line."""
    ids = [create_job().json()["id"] for _ in range(3)]
    time.sleep(1.2)
    samples = scrape(http)
    queue = settings.validate_queue
    assert value(samples, "ftjobs_queue_jobs", queue=queue, state="waiting") == 1
    assert value(samples, "ftjobs_queue_jobs", queue=queue, state="pending") == 2
    assert value(samples, "ftjobs_queue_oldest_job_age_seconds", queue=queue) >= 1
    assert value(samples, "ftjobs_queue_jobs", queue=settings.queue) == 0
    assert value(samples, "ftjobs_jobs", tenant="default", status="validating_files") == len(ids)
    assert value(samples, "ftjobs_workers") == 0
    # a path no route matches is one label, whatever the path
    assert http.get(f"/nowhere/{ids[0]}").status_code == 404
    assert value(scrape(http), "ftjobs_http_requests_total", route="unmatched", status="404") == 1


def test_replicas_report_the_same_deployment_figures(  # type: ignore[no-untyped-def]
    http, create_job, make_client: Callable[..., httpx.Client]
):
    create_job()
    other = make_client()
    deployment = {"ftjobs_jobs", "ftjobs_queue_jobs", "ftjobs_uploads_total", "ftjobs_workers"}
    ours, theirs = scrape(http), scrape(other)
    pick = {k: v for k, v in ours.items() if k[0] in deployment}
    assert pick and pick == {k: v for k, v in theirs.items() if k[0] in deployment}
    # HTTP figures are per process: the other replica served none of the uploads or creates
    assert value(ours, "ftjobs_http_requests_total", method="POST") == 2
    assert value(theirs, "ftjobs_http_requests_total", method="POST") == 0


def test_metrics_token(make_client: Callable[..., httpx.Client]) -> None:
    guarded = make_client(metrics_token="scrape-secret")
    refused = guarded.get("/metrics")
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "unauthorized"
    assert guarded.get("/metrics", headers={"authorization": "Bearer wrong"}).status_code == 401
    assert scrape(guarded, headers={"authorization": "Bearer scrape-secret"})


def test_metrics_is_not_under_v1_auth(make_client: Callable[..., httpx.Client], tmp_path: Path) -> None:
    """With API keys on, /metrics (like /healthz) still answers without one: it is for the scraper."""
    app = make_client(api_keys={"k1": "acme"})
    assert app.get("/v1/jobs").status_code == 401
    samples = scrape(app)
    # refused before routing, still counted under its route's template
    assert value(samples, "ftjobs_http_requests_total", method="GET", route="/v1/jobs", status="401") == 1


def test_dashboard_and_scrape_config_match_the_exported_families(http) -> None:  # type: ignore[no-untyped-def]
    """Every metric deploy/grafana/ftjobs.json queries is one /metrics exports; the scrape config targets /metrics."""
    exported = {family.name for family in text_string_to_metric_families(http.get("/metrics").text)}
    dashboard = json.loads((REPO / "deploy" / "grafana" / "ftjobs.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert len(exprs) >= 15
    queried = {re.sub(r"_(total|bucket|count|sum)$", "", m) for e in exprs for m in re.findall(r"ftjobs_[a-z_]+", e)}
    assert queried and queried <= exported, queried - exported
    titles = " ".join(p["title"] for p in dashboard["panels"]).lower()
    for topic in ("jobs by status", "queue depth", "oldest", "time to start", "duration", "tokens/s", "latency"):
        assert topic in titles
    config = yaml.safe_load((REPO / "deploy" / "prometheus.yml").read_text())
    (scrape_job,) = config["scrape_configs"]
    assert scrape_job["metrics_path"] == "/metrics"
    assert scrape_job["dns_sd_configs"][0]["port"] == 8000


def test_webhook_deliveries_by_outcome(  # type: ignore[no-untyped-def]
    make_client, receiver: Receiver, dispatchers  # noqa: F811 (the fixtures imported above)
) -> None:
    """The dispatcher (a process of its own, never scraped) counts each attempt in Redis; /metrics reports it."""
    api = make_client(webhook_allow_private=True)
    api.post("/v1/webhooks", json={"url": receiver.url()})
    receiver.codes = [500]
    dispatchers()
    job = new_job(api)
    api.post(f"/v1/jobs/{job['id']}/cancel")
    assert eventually(lambda: len(receiver.requests) == 2, 30), receiver.requests
    assert eventually(lambda: value(scrape(api), "ftjobs_webhook_deliveries_total", outcome="delivered") == 1, 10)
    assert value(scrape(api), "ftjobs_webhook_deliveries_total", outcome="retry") == 1


def test_a_running_jobs_gauges_come_and_go(http, redis) -> None:  # type: ignore[no-untyped-def]
    """What a worker's steps leave for /metrics while its job runs: tokens/s and step time per job, gone at its end."""
    telemetry = Telemetry(redis)
    for step in (1, 2, 3):
        pipe = redis.pipeline(transaction=False)
        telemetry.step("acme", "ftjob-1", Progress(step=step, tokens_seen=step * 512), pipe)
        pipe.execute()
        time.sleep(0.05)
    samples = scrape(http)
    tokens_per_s = value(samples, "ftjobs_job_tokens_per_second", tenant="acme", job_id="ftjob-1")
    step_s = value(samples, "ftjobs_job_step_seconds", tenant="acme", job_id="ftjob-1")
    assert step_s >= 0.05 and 0 < tokens_per_s <= 512 / 0.05
    assert value(samples, "ftjobs_training_step_seconds_count") == 2  # the first step is the baseline
    assert value(samples, "ftjobs_training_tokens_total") == 1024
    telemetry.finished("acme", "ftjob-1", JobStatus.succeeded)
    assert value(scrape(http), "ftjobs_job_tokens_per_second", job_id="ftjob-1") == 0
