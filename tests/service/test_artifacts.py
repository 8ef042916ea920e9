"""GET /v1/jobs/{id}/artifacts[/{name}]: only finalised (listed) artifacts, streamed with their sha256."""

from __future__ import annotations

import hashlib

from ftjobs.core import keys
from ftjobs.core.storage import Storage
from tests.service.conftest import assert_error, worker_write


def put(storage: Storage, job_id: str, name: str, content: bytes) -> None:
    writer = storage.writer(keys.artifact_path("default", job_id, name))
    writer.write(content)
    writer.commit()


def test_artifacts_list_and_download(http, create_job, redis, settings):  # type: ignore[no-untyped-def]
    job = create_job().json()
    assert http.get(f"/v1/jobs/{job['id']}/artifacts").json() == {"object": "list", "data": []}
    storage = Storage(settings.storage_url)
    content = bytes(range(256)) * 12_000  # ~3 MB: several streamed chunks
    name = "adapter/adapter_model.safetensors"
    put(storage, job["id"], name, content)
    put(storage, job["id"], "staged.bin", b"not final")  # in the store but not listed: never served
    artifact = {
        "name": name,
        "bytes": len(content),
        "sha256": hashlib.sha256(content).hexdigest(),
        "created_at": 1,
    }
    worker_write(redis, job, "validating_files", {"status": "succeeded", "artifacts": [artifact]})

    listed = http.get(f"/v1/jobs/{job['id']}/artifacts").json()["data"]
    assert listed == [artifact]
    response = http.get(f"/v1/jobs/{job['id']}/artifacts/{name}")
    assert response.status_code == 200
    assert response.content == content
    assert response.headers["x-content-sha256"] == artifact["sha256"]
    assert response.headers["content-length"] == str(len(content))
    assert 'filename="adapter_model.safetensors"' in response.headers["content-disposition"]
    assert_error(http.get(f"/v1/jobs/{job['id']}/artifacts/staged.bin"), 404, "artifact_not_found")
    for sneaky in ("..%2F..%2Ffiles%2Fx", "%2e%2e/%2e%2e/files/x", "adapter/../staged.bin"):
        response = http.get(f"/v1/jobs/{job['id']}/artifacts/{sneaky}")
        assert response.status_code == 404 and "not final" not in response.text
    assert_error(http.get("/v1/jobs/ftjob-" + "0" * 20 + "/artifacts"), 404, "job_not_found")


def test_listed_but_missing_artifact_is_404_and_names_are_encoded(http, create_job, redis, settings):  # type: ignore[no-untyped-def]
    job = create_job().json()
    storage = Storage(settings.storage_url)
    put(storage, job["id"], "carte_modèle.json", b"{}")
    listed = [
        {
            "name": "carte_modèle.json",
            "bytes": 2,
            "sha256": hashlib.sha256(b"{}").hexdigest(),
            "created_at": 1,
        },
        {"name": "gone.bin", "bytes": 1, "sha256": "0" * 64, "created_at": 1},
    ]
    worker_write(redis, job, "validating_files", {"status": "succeeded", "artifacts": listed})
    response = http.get(f"/v1/jobs/{job['id']}/artifacts/carte_modèle.json")
    assert response.status_code == 200 and response.json() == {}
    disposition = response.headers["content-disposition"]
    assert (
        'filename="carte_mod_le.json"' in disposition
        and "filename*=UTF-8''carte_mod%C3%A8le.json" in disposition
    )
    assert_error(
        http.get(f"/v1/jobs/{job['id']}/artifacts/gone.bin"), 404, "artifact_not_found", param="name"
    )
