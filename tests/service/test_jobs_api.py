"""POST/GET /v1/jobs, cancel, events, metrics, artifacts, idempotency and tenants, against a real Redis."""

from __future__ import annotations

import json
import time
import zlib
from pathlib import Path

import pytest
from rq import Queue
from rq.job import Job as RQJob
from rq.job import JobStatus as RQJobStatus
from rq.serializers import JSONSerializer

from ftjobs.core import keys
from tests.conftest import QUEUE
from tests.service.conftest import ROWS, assert_error, jsonl, upload, worker_write


def xadd(redis, key: str, entry: dict) -> str:  # type: ignore[no-untyped-def]
    return redis.xadd(key, {keys.STREAM_FIELD: json.dumps(entry)}).decode()


# ----------------------------------------------------------------------------- create


def test_create_job_enqueues_its_validation_with_a_json_payload(create_job, redis, model_path):  # type: ignore[no-untyped-def]
    response = create_job(method={"type": "lora", "r": 4}, metadata={"team": "ml"})
    assert response.status_code == 201, response.text
    job = response.json()
    assert job["status"] == "validating_files" and job["attempt"] == 0 and job["tenant"] == "default"
    shown = Path(model_path).name  # relative to its model root: the root is never shown
    assert job["model"] == shown and job["method"]["r"] == 4 and job["metadata"] == {"team": "ml"}
    assert job["resolved_hyperparameters"]["learning_rate"] == 2e-4
    assert job["resolved_hyperparameters"]["model"] == shown

    record = redis.hgetall(keys.job_key("default", job["id"]))
    assert record[b"status"] == b'"validating_files"' and record[b"attempt"] == b"0"
    assert set(record) == {f.value.encode() for f in keys.JobField}

    # The worker's validation (attempt 0) comes first, on the validation queue; it queues attempt 1 on QUEUE.
    assert Queue(QUEUE, connection=redis, serializer=JSONSerializer).job_ids == []
    queue = Queue("ftjobs-validate", connection=redis, serializer=JSONSerializer)
    assert queue.job_ids == [f"{job['id']}-0"]
    rq_job = queue.fetch_job(f"{job['id']}-0")
    assert rq_job.func_name == "ftjobs.jobs.validate.run"
    payload = {"job_id": job["id"], "tenant": "default", "attempt": 0, "queue": QUEUE}
    assert rq_job.kwargs == {"payload": payload}
    raw = redis.hget(f"rq:job:{job['id']}-0", "data")
    json.loads(zlib.decompress(raw))  # JSON on the wire, never pickle


def test_create_job_logs_status_events(http, create_job):  # type: ignore[no-untyped-def]
    job = create_job().json()
    events = http.get(f"/v1/jobs/{job['id']}/events").json()["data"]
    assert [(e["type"], e["data"]["status"]) for e in events] == [("status", "validating_files")]


def test_unknown_field_is_named(create_job):  # type: ignore[no-untyped-def]
    error = assert_error(create_job(unknown_field=1), 422, "validation_error", param="unknown_field")
    assert error["message"] == "unknown_field: Extra inputs are not permitted"


@pytest.mark.parametrize("raw", ["NaN", '"NaN"', "Infinity", "2.0", "0"])
def test_bad_learning_rate_is_named(http, training_file, model_path, raw):  # type: ignore[no-untyped-def]
    # raw JSON text: `NaN` and `Infinity` are what Python's json module (and FastAPI) accept
    body = f'{{"model": "{model_path}", "training_file": "{training_file}", '
    body += f'"hyperparameters": {{"learning_rate": {raw}}}}}'
    response = http.post("/v1/jobs", content=body, headers={"content-type": "application/json"})
    error = assert_error(response, 422, "validation_error", param="hyperparameters.learning_rate")
    assert error["message"].startswith("hyperparameters.learning_rate: ")


def test_negative_epochs_and_nested_method_fields_are_named(create_job):  # type: ignore[no-untyped-def]
    error = assert_error(create_job(hyperparameters={"n_epochs": -1}), 422, "validation_error")
    assert error["param"] == "hyperparameters.n_epochs"
    assert error["message"] == "hyperparameters.n_epochs: Input should be greater than or equal to 1"
    assert_error(create_job(method={"type": "lora", "r": 0}), 422, "validation_error", param="method.r")
    assert_error(create_job(method={"type": "nope"}), 422, "validation_error", param="method")


def test_malformed_json_and_missing_body(http):  # type: ignore[no-untyped-def]
    response = http.post("/v1/jobs", content=b'{"model": ', headers={"content-type": "application/json"})
    assert "not valid JSON" in assert_error(response, 400, "malformed_body")["message"]
    assert_error(http.post("/v1/jobs"), 422, "validation_error", param=None)
    assert_error(http.post("/v1/jobs", json=[1]), 422, "validation_error")


def test_training_file_missing_or_unknown(http, model_path):  # type: ignore[no-untyped-def]
    response = http.post("/v1/jobs", json={"model": model_path})
    assert_error(response, 422, "validation_error", param="training_file")
    response = http.post("/v1/jobs", json={"model": model_path, "training_file": "file-" + "0" * 20})
    assert_error(response, 404, "file_not_found", param="training_file")
    response = http.post("/v1/jobs", json={"model": model_path, "training_file": "nope"})
    assert_error(response, 422, "validation_error", param="training_file")


def test_file_format_must_fit_the_task(http, create_job, training_file):  # type: ignore[no-untyped-def]
    error = assert_error(create_job(task="classification"), 422, "incompatible_file", param="training_file")
    assert "prompt_completion" in error["message"] and "text_label" in error["message"]
    labelled = upload(http, jsonl(ROWS["text_label"])).json()["id"]
    assert_error(create_job(training_file=labelled), 422, "incompatible_file", param="training_file")
    assert create_job(training_file=labelled, task="classification").status_code == 201
    other = upload(http, jsonl(ROWS["text"])).json()["id"]
    assert_error(create_job(validation_file=other), 422, "incompatible_file", param="validation_file")
    response = create_job(validation_file="file-" + "1" * 20)
    assert_error(response, 404, "file_not_found", param="validation_file")
    assert create_job(validation_file=training_file).status_code == 201


@pytest.mark.parametrize("model", ["/etc/passwd", "/", "~/models/x", "MODEL_ROOT-evil/m"])
def test_model_outside_the_roots_is_refused(create_job, model_root, model):  # type: ignore[no-untyped-def]
    model = model.replace("MODEL_ROOT", str(model_root))
    assert_error(create_job(model=model), 422, "model_not_allowed", param="model")


def test_model_inside_a_root_or_relative_is_accepted(create_job, model_root):  # type: ignore[no-untyped-def]
    assert create_job(model=str(model_root / "a" / "." / "b")).status_code == 201
    assert create_job(model="org/model-name").status_code == 201  # relative to a root, resolved by the worker
    assert_error(create_job(model="a/../../etc"), 422, "validation_error", param="model")


# ----------------------------------------------------------------------------- read


def test_list_jobs_paginates_newest_first_and_filters(http, create_job):  # type: ignore[no-untyped-def]
    ids = [create_job().json()["id"] for _ in range(3)]
    page = http.get("/v1/jobs", params={"limit": 2}).json()
    assert [j["id"] for j in page["data"]] == [ids[2], ids[1]]
    assert page["has_more"] is True and page["last_id"] == ids[1]
    page = http.get("/v1/jobs", params={"limit": 2, "after": ids[1]}).json()
    assert [j["id"] for j in page["data"]] == [ids[0]] and page["has_more"] is False
    http.post(f"/v1/jobs/{ids[1]}/cancel")
    page = http.get("/v1/jobs", params={"status": "cancelled"}).json()
    assert [j["id"] for j in page["data"]] == [ids[1]]
    page = http.get("/v1/jobs", params={"status": "validating_files", "limit": 1}).json()
    assert [j["id"] for j in page["data"]] == [ids[2]] and page["has_more"] is True
    assert_error(http.get("/v1/jobs", params={"status": "bogus"}), 422, "validation_error", param="status")
    assert_error(http.get("/v1/jobs", params={"limit": 101}), 422, "validation_error", param="limit")


def test_get_unknown_job_is_404(http):  # type: ignore[no-untyped-def]
    error = assert_error(http.get("/v1/jobs/ftjob-" + "0" * 20), 404, "job_not_found", param=None)
    assert error["type"] == "invalid_request_error"
    assert_error(http.get("/v1/jobs/../../etc"), 404, "not_found")
    assert_error(http.get("/v1/jobs/not-a-job"), 404, "job_not_found")


# ----------------------------------------------------------------------------- cancel


def test_cancel_queued_job(http, create_job, redis):  # type: ignore[no-untyped-def]
    job = create_job().json()
    response = http.post(f"/v1/jobs/{job['id']}/cancel")
    assert response.status_code == 200, response.text
    cancelled = response.json()
    assert cancelled["status"] == "cancelled" and cancelled["finished_at"] is not None
    rq_job = RQJob.fetch(f"{job['id']}-0", connection=redis, serializer=JSONSerializer)  # its validation
    assert rq_job.get_status() == RQJobStatus.CANCELED
    assert Queue("ftjobs-validate", connection=redis, serializer=JSONSerializer).job_ids == []
    events = http.get(f"/v1/jobs/{job['id']}/events").json()["data"]
    assert events[-1]["type"] == "status" and events[-1]["data"]["status"] == "cancelled"
    error = assert_error(http.post(f"/v1/jobs/{job['id']}/cancel"), 409, "job_not_cancellable")
    assert "cancelled" in error["message"]
    assert_error(http.post("/v1/jobs/ftjob-" + "0" * 20 + "/cancel"), 404, "job_not_found")


def test_cancel_running_job_asks_the_worker(http, create_job, redis):  # type: ignore[no-untyped-def]
    job = create_job().json()
    started = {"status": "running", "started_at": int(time.time())}
    written, _ = worker_write(
        redis, job, "validating_files", started, {"created_at": time.time(), "message": "started"}
    )
    assert written == 1
    response = http.post(f"/v1/jobs/{job['id']}/cancel")
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "running" and response.json()["cancel_requested"] is True
    assert redis.hget(keys.job_key("default", job["id"]), "cancel_requested") == b"true"
    again = http.post(f"/v1/jobs/{job['id']}/cancel").json()
    assert again["cancel_requested"] is True
    messages = [e["message"] for e in http.get(f"/v1/jobs/{job['id']}/events").json()["data"]]
    assert sum("Cancellation requested" in m for m in messages) == 1
    worker_write(redis, job, "running", {"status": "cancelled", "finished_at": int(time.time())})
    assert_error(http.post(f"/v1/jobs/{job['id']}/cancel"), 409, "job_not_cancellable")


# ----------------------------------------------------------------------------- streams


def test_events_paginate_by_stream_id(http, create_job, redis):  # type: ignore[no-untyped-def]
    job = create_job().json()
    key = keys.events_key("default", job["id"])
    for i in range(5):
        xadd(redis, key, {"created_at": time.time(), "level": "info", "type": "message", "message": f"m{i}"})
    page = http.get(f"/v1/jobs/{job['id']}/events", params={"limit": 3}).json()
    assert len(page["data"]) == 3 and page["has_more"] is True
    seen = [e["message"] for e in page["data"]]
    while page["has_more"]:
        page = http.get(f"/v1/jobs/{job['id']}/events", params={"limit": 3, "after": page["last_id"]}).json()
        seen += [e["message"] for e in page["data"]]
    assert seen[1:] == [f"m{i}" for i in range(5)]  # after the status event, in order
    everything = http.get(f"/v1/jobs/{job['id']}/events", params={"after": "0-0"}).json()
    assert len(everything["data"]) == 6 and everything["has_more"] is False
    empty = http.get(f"/v1/jobs/{job['id']}/events", params={"after": everything["last_id"]}).json()
    assert empty == {"object": "list", "data": [], "has_more": False, "last_id": None}
    url = f"/v1/jobs/{job['id']}/events"
    assert_error(http.get(url, params={"after": "x)"}), 422, "validation_error", param="after")
    assert_error(http.get(url, params={"limit": 1001}), 422, "validation_error", param="limit")
    assert_error(http.get("/v1/jobs/ftjob-" + "0" * 20 + "/events"), 404, "job_not_found")


def test_metrics_paginate_by_stream_id(http, create_job, redis):  # type: ignore[no-untyped-def]
    job = create_job().json()
    key = keys.metrics_key("default", job["id"])
    ids = [
        xadd(
            redis,
            key,
            {
                "step": s,
                "epoch": s / 4,
                "split": "train",
                "created_at": time.time(),
                "values": {"loss": 1 / s},
            },
        )
        for s in range(1, 5)
    ]
    page = http.get(f"/v1/jobs/{job['id']}/metrics", params={"limit": 3}).json()
    assert [p["id"] for p in page["data"]] == ids[:3] and page["has_more"] is True
    assert page["data"][0]["values"] == {"loss": 1.0} and page["data"][0]["split"] == "train"
    page = http.get(f"/v1/jobs/{job['id']}/metrics", params={"after": page["last_id"]}).json()
    assert [p["step"] for p in page["data"]] == [4] and page["has_more"] is False
    assert_error(http.get("/v1/jobs/ftjob-" + "0" * 20 + "/metrics"), 404, "job_not_found")


# ----------------------------------------------------------------------------- idempotency


def test_idempotency_key_returns_the_same_job(create_job, redis):  # type: ignore[no-untyped-def]
    first = create_job(suffix="a", headers={"Idempotency-Key": "k-1"})
    assert first.status_code == 201 and "idempotent-replayed" not in first.headers
    again = create_job(suffix="a", headers={"Idempotency-Key": "k-1"})
    assert again.status_code == 200 and again.headers["idempotent-replayed"] == "true"
    assert again.json()["id"] == first.json()["id"]
    assert len(Queue("ftjobs-validate", connection=redis, serializer=JSONSerializer).job_ids) == 1
    stored = json.loads(redis.get(keys.idempotency_key("default", "k-1")))
    assert stored["job_id"] == first.json()["id"] and len(stored["request_sha256"]) == 64
    assert 0 < redis.ttl(keys.idempotency_key("default", "k-1")) <= keys.IDEMPOTENCY_TTL_S
    # the same request spelled differently (explicit defaults) is the same request
    spelled = create_job(suffix="a", hyperparameters={"n_epochs": 3}, headers={"Idempotency-Key": "k-1"})
    assert spelled.json()["id"] == first.json()["id"]
    other = create_job(suffix="b", headers={"Idempotency-Key": "k-1"})
    assert_error(other, 409, "idempotency_key_reused", param="Idempotency-Key")
    assert create_job(suffix="b", headers={"Idempotency-Key": "k-2"}).status_code == 201
    assert_error(create_job(headers={"Idempotency-Key": "x" * 300}), 422, "validation_error", param="Idempotency-Key")


# ----------------------------------------------------------------------------- tenants


def test_tenants_are_isolated(make_client, model_path):  # type: ignore[no-untyped-def]
    tc = make_client(api_keys={"key-a": "alpha", "key-b": "beta"})
    a = {"Authorization": "Bearer key-a"}
    b = {"Authorization": "Bearer key-b"}
    file = upload(tc, jsonl(ROWS["text"]), headers=a).json()
    assert file["tenant"] == "alpha"
    job = tc.post("/v1/jobs", json={"model": model_path, "training_file": file["id"]}, headers=a).json()
    assert job["tenant"] == "alpha"
    assert tc.get(f"/v1/jobs/{job['id']}", headers=a).status_code == 200
    assert_error(tc.get(f"/v1/jobs/{job['id']}", headers=b), 404, "job_not_found")
    assert_error(tc.post(f"/v1/jobs/{job['id']}/cancel", headers=b), 404, "job_not_found")
    assert_error(tc.get(f"/v1/jobs/{job['id']}/events", headers=b), 404, "job_not_found")
    assert_error(tc.get(f"/v1/files/{file['id']}", headers=b), 404, "file_not_found")
    response = tc.post("/v1/jobs", json={"model": model_path, "training_file": file["id"]}, headers=b)
    assert_error(response, 404, "file_not_found", param="training_file")
    assert tc.get("/v1/jobs", headers=b).json()["data"] == []
    assert [j["id"] for j in tc.get("/v1/jobs", headers=a).json()["data"]] == [job["id"]]
    missing = assert_error(tc.get("/v1/jobs"), 401, "unauthorized")
    assert missing["type"] == "invalid_request_error"
    assert tc.get("/v1/jobs").headers["www-authenticate"] == "Bearer"
    assert_error(tc.get("/v1/jobs", headers={"Authorization": "Bearer nope"}), 401, "unauthorized")
    assert_error(tc.get("/v1/jobs", headers={"Authorization": "Basic a2V5LWE="}), 401, "unauthorized")
    assert tc.get("/healthz").status_code == 200  # probes need no key


def test_no_key_is_a_401_before_the_body_is_read(make_client):  # type: ignore[no-untyped-def]
    """A caller without a valid key learns nothing about the body: not malformed, not too large, not a bad file."""
    tc = make_client(api_keys={"key-a": "alpha"})
    for headers in ({}, {"Authorization": "Bearer nope"}):
        for content, extra in ((b"{not json", {}), (b"{}", {"Content-Length": str(10**9)})):
            response = tc.post(
                "/v1/jobs", content=content, headers={"Content-Type": "application/json", **extra, **headers}
            )
            assert_error(response, 401, "unauthorized")
        assert_error(upload(tc, b"\xff\xfe not a dataset", headers=headers), 401, "unauthorized")
    good = {"Authorization": "Bearer key-a", "Content-Type": "application/json"}
    assert_error(tc.post("/v1/jobs", content=b"{not json", headers=good), 400, "malformed_body")


@pytest.mark.parametrize("field", ["augment_model", "augment_back_model"])
def test_augmentation_models_are_held_to_the_model_roots(create_job, model_root, field):  # type: ignore[no-untyped-def]
    augment = "paraphrase" if field == "augment_model" else "back_translate"
    data = {"augment": [augment], "augment_model": str(model_root / "m"), field: "/etc"}
    error = assert_error(create_job(data=data), 422, "model_not_allowed", param=f"data.{field}")
    assert str(model_root) not in error["message"]  # the deployment's folders are not the tenant's business
    data[field] = "m2"  # a name, resolved on the worker
    assert create_job(data=data).status_code == 201


def test_a_model_folder_linking_out_of_the_roots_is_refused_by_the_api(create_job, model_root, tmp_path):  # type: ignore[no-untyped-def]
    model = model_root / "linked-out"
    model.mkdir()
    (model / "config.json").write_text("{}")
    secret = tmp_path / "secret.txt"
    secret.write_text("root:x:0:0")
    (model / "vocab.txt").symlink_to(secret)
    data = {"augment": ["back_translate"], "augment_model": "linked-out", "augment_back_model": str(model)}
    for body, param in (({"model": str(model)}, "model"), ({"model": "linked-out"}, "model"),
                        ({"data": data}, "data.augment_model")):  # fmt: skip
        error = assert_error(create_job(**body), 422, "model_not_allowed", param=param)
        assert "vocab.txt" in error["message"] and str(secret) not in error["message"], error
        assert str(model_root) not in error["message"], error
    (model / "vocab.txt").unlink()
    (model / "vocab.txt").symlink_to(model / "config.json")  # a link that stays inside the root is fine
    assert create_job(model="linked-out").status_code == 201
