"""Tenant B, with its own valid key, learns nothing of tenant A's: 404 (never 403, never 200) on every id route of
the app and for every id of A that B's new job references; tenant A still reaches all of them.

The routes come from the app itself and the referencing fields from JobCreate's schema, so a new id route or a
new `*_file` / `*_job_id` field is probed without touching this test (an id kind it cannot fill fails it)."""

from __future__ import annotations

import re
import time
from typing import Any
from urllib.parse import quote, unquote

import pytest

from ftjobs.client.models import FILE_ID_PATTERN, JOB_ID_PATTERN, JobCreate
from tests.service.conftest import ROWS, assert_error
from tests.service.tenant_jobs import bearer, finished_job, id_routes, tiny_job_request, upload_as

KEY_A, KEY_B = "sk-alpha-0123456789abcdef", "sk-beta-fedcba9876543210"
A, B = bearer(KEY_A), bearer(KEY_B)
PARAM = re.compile(r"{(\w+)(?::\w+)?}")
EXPORT_POST = re.compile(r"^/v1/jobs/[^/]+/exports$")


def body_for(method: str, url: str) -> dict[str, Any] | None:
    """A valid body for the id routes that need one (the probe is about the id, not a 422 on the body)."""
    return {"format": "safetensors"} if method == "POST" and EXPORT_POST.match(url) else None


@pytest.fixture
def env(env: dict[str, str]) -> dict[str, str]:
    return {**env, "FTJOBS_API_KEYS": f"{KEY_A}:alpha,{KEY_B}:beta", "FTJOBS_WEBHOOK_ALLOW_PRIVATE": "1"}


def reference_fields() -> dict[str, str]:
    """JobCreate's fields that hold the id of another resource: field -> "file" or "job" (from the id patterns)."""
    kinds = {FILE_ID_PATTERN: "file", JOB_ID_PATTERN: "job"}
    found = {}
    for name, prop in JobCreate.model_json_schema()["properties"].items():
        patterns = {prop.get("pattern")} | {option.get("pattern") for option in prop.get("anyOf", [])}
        for pattern, kind in kinds.items():
            if pattern in patterns:
                found[name] = kind
    return found


def probes(
    app: Any, job: dict[str, Any], pending: dict[str, Any], model: str, export_files: list[str], **ids: str
) -> list[tuple[str, str]]:
    """(method, URL) of every id route, filled with tenant A's ids: both jobs (on both APIs), both files, every
    artifact, the finished job's fine-tuned model, and one of each other resource (`ids`: webhook_id, sweep_id,
    monitor_id, annotation_id, export_id; an export's files are probed on the finished job only)."""
    values: dict[str, list[str]] = {
        **{name: [value] for name, value in ids.items()},
        "model": [model],
        "job_id": [job["id"], pending["id"]],
        "fine_tuning_job_id": [job["id"], pending["id"]],
        "file_id": [job["training_file"], job["validation_file"]],
        "name": [a["name"] for a in job["artifacts"]],
    }
    urls: list[tuple[str, str]] = []
    for method, template, params in id_routes(app):
        missing = [p for p in params if p not in values]
        assert not missing, f"{method} {template}: the matrix has no tenant-A value for {missing}: add one"
        combos: list[dict[str, str]] = [{}]
        for param in params:
            options = export_files if param == "name" and "/exports/" in template else values[param]
            combos = [{**c, param: v} for c in combos for v in options]
        for combo in combos:
            if ("name" in combo or "export_id" in combo) and combo.get("job_id") != job["id"]:
                continue  # only the finished job has artifacts and exports
            url = PARAM.sub(lambda m, c=combo: quote(c[m.group(1)], safe="/"), template)  # type: ignore[misc]
            urls.append((method, url))
    return urls


def test_tenant_b_gets_404_for_every_id_of_tenant_a(app, http, worker, tiny_causal_lm):  # type: ignore[no-untyped-def]
    job = finished_job(http, KEY_A, tiny_causal_lm, worker)  # real artifacts, events and metrics
    export = finished_export(http, job["id"])
    worker.stop()  # what follows stays where the API leaves it
    request_a = tiny_job_request(tiny_causal_lm, job["training_file"], job["validation_file"])
    pending = http.post("/v1/jobs", json=request_a, headers=A).json()
    assert pending["status"] == "validating_files", pending

    hook = http.post("/v1/webhooks", json={"url": "http://127.0.0.1:9/hook"}, headers=A).json()
    model = http.get(f"/v1/fine_tuning/jobs/{job['id']}", headers=A).json()["fine_tuned_model"]
    assert model and model.startswith("ft:"), model
    lr = {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}
    sweep = http.post("/v1/sweeps", json={"job": request_a, "search_space": {"hyperparameters.learning_rate": lr}},
                      headers=A).json()  # fmt: skip
    monitor = http.post("/v1/monitors", json={"job_id": job["id"], "dataset": "valid.jsonl", "schedule": "0 3 * * *"},
                        headers=A)  # fmt: skip
    assert monitor.status_code == 201, monitor.text
    keywords = [{"type": "keywords", "label": "a", "keywords": ["colour"]}]
    annotation = http.post("/v1/annotations", headers=A, json={"file_id": job["training_file"], "text_field": "prompt",
                           "labels": ["a", "b"], "functions": keywords})  # fmt: skip
    assert annotation.status_code in (201, 202), annotation.text
    ids = {"webhook_id": hook["id"], "sweep_id": sweep["id"], "monitor_id": monitor.json()["id"],
           "annotation_id": annotation.json()["id"], "export_id": export["id"]}  # fmt: skip
    matrix = probes(app, job, pending, model, [f["name"] for f in export["files"]], **ids)
    routes = {template for _, template, _ in id_routes(app)}
    assert len(routes) >= 8 and len(matrix) >= len(routes) + len(job["artifacts"]), (routes, matrix)
    print(f"cross-tenant matrix: {len(matrix)} probes over {len(routes)} id routes, {len(job['artifacts'])} artifacts")
    for method, url in matrix:
        response = http.request(method, url, headers=B, json=body_for(method, url))
        assert response.status_code == 404, (method, url, response.status_code, response.text)
        code = response.json()["error"]["code"]
        unknown = ("job_not_found", "file_not_found", "webhook_not_found", "model_not_found", "sweep_not_found",
                   "monitor_not_found", "annotation_not_found", "export_not_found")  # fmt: skip
        assert code in unknown, (method, url, code)  # the owner is what is unknown
        assert "x-content-sha256" not in response.headers
    for tenant_b_list in ("/v1/jobs", "/v1/files", "/v1/sweeps", "/v1/monitors", "/v1/annotations"):
        listed = http.get(tenant_b_list, headers=B).json()["data"]
        assert not {item["id"] for item in listed} & {job["id"], pending["id"], *ids.values(), *job_files(job)}

    # B's writes left A's job alone; A reads everything, then every write finds its resource (never a 404).
    assert http.get(f"/v1/jobs/{pending['id']}", headers=A).json()["status"] == "validating_files"
    sha = {a["name"]: a["sha256"] for a in job["artifacts"]}
    download = app.openapi()["paths"]["/v1/jobs/{job_id}/artifacts/{name}"]["get"]["responses"]["200"]
    for method, url in sorted(matrix, key=lambda p: (p[0] != "GET", p[0] == "DELETE")):  # deletes last
        response = http.request(method, url, headers=A, json=body_for(method, url))
        if method == "GET":
            assert response.status_code == 200, (url, response.text)
            name = url.partition("/artifacts/")[2]
            if name:
                assert response.headers["x-content-sha256"] == sha[unquote(name)]
                assert response.headers["content-type"].split(";")[0] in download["content"], (name, response.headers)
        else:  # cancel, pause, resume, run, export, delete: done or started, or refused by the resource's state (409)
            assert response.status_code in (200, 201, 202, 409), (method, url, response.status_code, response.text)


def finished_export(http: Any, job_id: str, timeout: float = 300) -> dict[str, Any]:
    """Tenant A's safetensors export of its finished job, once the worker has written it."""
    created = http.post(f"/v1/jobs/{job_id}/exports", json={"format": "safetensors"}, headers=A)
    assert created.status_code == 202, created.text
    url, end = f"/v1/jobs/{job_id}/exports/{created.json()['id']}", time.monotonic() + timeout
    while (export := http.get(url, headers=A).json())["status"] in ("queued", "running") and time.monotonic() < end:
        time.sleep(0.5)
    assert export["status"] == "succeeded" and export["files"], export
    return dict(export)


def test_tenant_b_cannot_reference_tenant_a_ids_in_a_new_job(http, worker, tiny_causal_lm):  # type: ignore[no-untyped-def]
    job = finished_job(http, KEY_A, tiny_causal_lm, worker)
    worker.stop()
    fields = reference_fields()
    assert {"training_file", "validation_file", "reference_file", "parent_job_id"} <= set(fields)
    own_b = upload_as(http, KEY_B, ROWS["prompt_completion"] * 4)
    a_ids = {"file": job["validation_file"], "job": job["id"]}

    def request(training_file: str, field: str) -> dict[str, Any]:
        body = tiny_job_request(tiny_causal_lm, training_file, training_file)
        body["validation_file"] = None
        body[field] = a_ids[fields[field]]
        return body

    control = http.post("/v1/jobs", json=tiny_job_request(tiny_causal_lm, own_b, own_b), headers=B)
    assert control.status_code == 201, control.text  # B's own ids are fine: a 404 below is the foreign id
    for field, kind in fields.items():
        refused = http.post("/v1/jobs", json=request(own_b, field), headers=B)
        assert_error(refused, 404, f"{kind}_not_found", param=field)
        accepted = http.post("/v1/jobs", json=request(job["training_file"], field), headers=A)
        assert accepted.status_code == 201, (field, accepted.text)
        assert accepted.json()[field] == a_ids[kind]


def job_files(job: dict[str, Any]) -> set[str]:
    return {job[f] for f in ("training_file", "validation_file", "reference_file") if job.get(f)}
