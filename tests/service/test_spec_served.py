"""What the spec says is what is served: `Allow` on every path of the app, artifact content types, OpenAPI links."""

from __future__ import annotations

import hashlib
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from ftjobs.core import keys
from ftjobs.core.storage import Storage
from ftjobs.core.tenants import key_hash
from ftjobs.service.handlers import route_table
from tests.service.conftest import assert_error, worker_write

KEY = "sk-spec-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {KEY}"}
PARAM = re.compile(r"{(\w+)(?::\w+)?}")
SAMPLE = {
    "job_id": "ftjob-" + "0" * 20,
    "fine_tuning_job_id": "ftjob-" + "0" * 20,
    "file_id": "file-" + "0" * 20,
    "webhook_id": "webhook-" + "0" * 20,
    "sweep_id": "sweep-" + "0" * 20,
    "annotation_id": "annot-" + "0" * 20,
    "monitor_id": "mon-" + "0" * 20,
    "export_id": "export-" + "0" * 20,
    "model": "ft:tiny:x:ftjob-" + "0" * 20,
    "name": "adapter/config.json",
}
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")


@pytest.fixture
def env(env: dict[str, str], tmp_path: Path) -> dict[str, str]:
    """An admin key (the admin paths too), and hundreds of requests at once: a rate no default would allow."""
    tenants = tmp_path / "tenants.toml"
    tenants.write_text(
        "[defaults]\nrequests_per_second = 100000\n\n"
        f'[[tenants.spec.keys]]\nsha256 = "{key_hash(KEY)}"\nscopes = ["read", "submit", "admin"]\n'
    )
    return {**env, "FTJOBS_TENANTS_FILE": str(tenants)}


@pytest.fixture
def http(http):  # type: ignore[no-untyped-def]
    """The app's client with the tenant's key on every request (the shared upload/create fixtures send none)."""
    http.headers.update(AUTH)
    return http


def served_paths(app: Any) -> dict[str, set[str]]:
    """Each path template of the app (API and docs routes alike) -> the methods its routes serve."""
    paths: dict[str, set[str]] = defaultdict(set)
    for route in route_table(app.routes):
        if getattr(route, "methods", None):
            paths[route.path] |= set(route.methods)
    return dict(paths)


def test_every_path_answers_options_and_405_with_its_full_allow(app, http):  # type: ignore[no-untyped-def]
    spec = app.openapi()
    paths = served_paths(app)
    assert {"/v1/files", "/v1/jobs", "/v1/jobs/{job_id}/artifacts/{name:path}"} <= set(paths)
    for template, methods in paths.items():
        url = PARAM.sub(lambda m: SAMPLE[m.group(1)], template)
        allow = set(methods) | {"OPTIONS"}
        options = http.options(url, headers=AUTH)
        assert options.status_code == 204 and options.content == b"", (url, options.status_code, options.text)
        assert set(options.headers["allow"].split(", ")) == allow, (url, options.headers["allow"])
        declared = spec["paths"].get(PARAM.sub(r"{\1}", template))
        if declared is not None:  # an API path: the spec names exactly what is served (HEAD only where served)
            assert {m.upper() for m in declared} == methods - {"HEAD"}, (template, declared.keys(), methods)
        for method in sorted(set(METHODS) - methods):
            refused = http.request(method, url, headers=AUTH)
            assert refused.status_code == 405, (method, url, refused.status_code)
            assert set(refused.headers["allow"].split(", ")) == allow, (method, url, refused.headers["allow"])
            if method != "HEAD":  # a HEAD answer has no body
                assert_error(refused, 405, "method_not_allowed")


def test_files_and_jobs_allow_both_their_methods(http):  # type: ignore[no-untyped-def]
    """The issue's probe: OPTIONS on /v1/files and /v1/jobs answered `Allow: POST` only."""
    for url in ("/v1/files", "/v1/jobs"):
        assert http.options(url, headers=AUTH).headers["allow"] == "GET, OPTIONS, POST"
        assert http.delete(url, headers=AUTH).headers["allow"] == "GET, OPTIONS, POST"


def test_artifact_downloads_are_served_with_the_declared_content_types(app, http, create_job, redis, settings):  # type: ignore[no-untyped-def]
    declared = set(app.openapi()["paths"]["/v1/jobs/{job_id}/artifacts/{name}"]["get"]["responses"]["200"]["content"])
    names = [
        "README.md",
        "metrics.json",
        "adapter/tokenizer.json",
        "eval_samples.jsonl",
        "loss_curve.png",
        "adapter/vocab.txt",
        "adapter/adapter_model.safetensors",
        "checkpoint/optimizer.pt",  # the host's mime.types says application/vnd.snesdev-page-table
        "tensorboard/events.out.tfevents.1700000000.host.1.0",
        "checkpoint/rng_state.pth",
        "NOTES.MD",
    ]
    job = create_job().json()
    storage = Storage(settings.storage_url)
    artifacts = []
    for name in names:
        content = f"content of {name}".encode()
        writer = storage.writer(keys.artifact_path(job["tenant"], job["id"], name))
        writer.write(content)
        writer.commit()
        artifacts.append(
            {"name": name, "bytes": len(content), "sha256": hashlib.sha256(content).hexdigest(), "created_at": 1}
        )
    worker_write(redis, job, "validating_files", {"status": "succeeded", "artifacts": artifacts})
    served = {}
    for name in names:
        response = http.get(f"/v1/jobs/{job['id']}/artifacts/{name}", headers=AUTH)
        assert response.status_code == 200, response.text
        served[name] = response.headers["content-type"].split(";")[0]
    assert set(served.values()) == declared, (served, declared)  # each served type declared, none declared unused
    assert served["README.md"] == served["NOTES.MD"] == "text/markdown"
    assert served["metrics.json"] == "application/json" and served["loss_curve.png"] == "image/png"
    assert served["checkpoint/optimizer.pt"] == "application/octet-stream"


def test_links_name_real_operations_and_parameters(app):  # type: ignore[no-untyped-def]
    spec = app.openapi()
    operations = {op["operationId"]: op for item in spec["paths"].values() for op in item.values()}
    schemas = spec["components"]["schemas"]
    count = 0
    for source in operations.values():
        for response in source["responses"].values():
            for name, link in response.get("links", {}).items():
                target = operations[link["operationId"]]
                params = {p["name"] for p in target.get("parameters", [])}
                assert set(link.get("parameters", {})) <= params, (name, link, params)
                if "requestBody" in link:
                    ref = target["requestBody"]["content"]["application/json"]["schema"]["$ref"]
                    assert set(link["requestBody"]) <= set(schemas[ref.rsplit("/", 1)[1]]["properties"]), link
                for expression in [*link.get("parameters", {}).values(), *link.get("requestBody", {}).values()]:
                    assert expression.startswith(("$response.body#/", "$request.path.")), expression
                count += 1
    assert count >= 15
    created = operations["jobs-create_job"]["responses"]["201"]["links"]
    assert {"GetJob", "CancelJob", "ListEvents", "ListMetrics", "ListArtifacts"} <= set(created)
