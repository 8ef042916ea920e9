"""API keys from a real tenants file: scopes (403 naming the scope), rotation by editing the file (no restart),
only hashes kept (never the key in Redis or in reprs), `ftjobs keys new`, and the FTJOBS_API_KEYS form."""

from __future__ import annotations

import contextlib
import io
import os
import time
from pathlib import Path
from typing import Any

import pytest

from ftjobs.core.tenants import key_hash
from ftjobs.launch.cli import main as ftjobs_main
from tests.jobs.helpers import eventually
from tests.service.conftest import ROWS, assert_error, jsonl, upload
from tests.service.tenant_jobs import bearer

READER, SUBMITTER, BOTH = "ftj_reader-key-0001", "ftj_submit-key-0002", "ftj_both-key-0003"


def key_lines(tenant: str, key: str, scopes: list[str], name: str = "") -> str:
    scope_list = ", ".join(f'"{s}"' for s in scopes)
    return f'[[tenants.{tenant}.keys]]\nsha256 = "{key_hash(key)}"\nscopes = [{scope_list}]\nname = "{name}"\n'


def write_tenants(path: Path, text: str) -> None:
    """Replace the file atomically, as an operator's editor or config management does."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


@pytest.fixture
def tenants_file(tmp_path: Path) -> Path:
    path = tmp_path / "tenants.toml"
    write_tenants(
        path,
        key_lines("alpha", READER, ["read"], "dashboard")
        + key_lines("alpha", SUBMITTER, ["submit"], "ci")
        + key_lines("alpha", BOTH, ["read", "submit"]),
    )
    return path


def test_each_method_needs_its_scope(make_client, tenants_file, model_path):  # type: ignore[no-untyped-def]
    tc = make_client(tenants_file=tenants_file)
    file_id = upload(tc, jsonl(ROWS["text"]), headers=bearer(SUBMITTER)).json()["id"]
    assert tc.get(f"/v1/files/{file_id}", headers=bearer(READER)).status_code == 200
    assert tc.get("/v1/jobs", headers=bearer(BOTH)).status_code == 200

    error = assert_error(tc.get("/v1/jobs", headers=bearer(SUBMITTER)), 403, "insufficient_scope", param="read")
    assert "ci" in error["message"] and SUBMITTER not in error["message"]  # the key's name, never the key
    assert_error(tc.get(f"/v1/files/{file_id}/profile", headers=bearer(SUBMITTER)), 403, "insufficient_scope")
    # Writes need `submit`, refused before the body is read (a malformed body would be a 400 otherwise).
    job = {"model": model_path, "training_file": file_id}
    assert_error(tc.post("/v1/jobs", json=job, headers=bearer(READER)), 403, "insufficient_scope", param="submit")
    garbage = tc.post("/v1/jobs", content=b"{not json", headers={**bearer(READER), "Content-Type": "application/json"})
    assert_error(garbage, 403, "insufficient_scope", param="submit")
    assert_error(upload(tc, b"\xff not a dataset", headers=bearer(READER)), 403, "insufficient_scope")
    created = tc.post("/v1/jobs", json=job, headers=bearer(SUBMITTER))
    assert created.status_code == 201, created.text
    cancel = tc.post(f"/v1/jobs/{created.json()['id']}/cancel", headers=bearer(READER))
    assert_error(cancel, 403, "insufficient_scope", param="submit")
    assert tc.post(f"/v1/jobs/{created.json()['id']}/cancel", headers=bearer(SUBMITTER)).status_code == 200
    # 401 still comes first, before any body, for a key the file does not know.
    for headers in ({}, bearer("ftj_unknown")):
        response = tc.post("/v1/jobs", content=b"{not json", headers={**headers, "Content-Type": "application/json"})
        assert_error(response, 401, "unauthorized")
    assert tc.get("/healthz").status_code == 200


def test_rotation_by_editing_the_file(make_client, tenants_file):  # type: ignore[no-untyped-def]
    """A new key works and a removed key gets 401 within seconds of the file changing, with no restart."""
    tc = make_client(tenants_file=tenants_file)
    new_key = "ftj_rotated-key-0004"
    assert tc.get("/v1/jobs", headers=bearer(BOTH)).status_code == 200
    assert_error(tc.get("/v1/jobs", headers=bearer(new_key)), 401, "unauthorized")

    write_tenants(tenants_file, key_lines("alpha", new_key, ["read", "submit"]))
    assert eventually(lambda: tc.get("/v1/jobs", headers=bearer(new_key)).status_code == 200, timeout=30)
    assert_error(tc.get("/v1/jobs", headers=bearer(BOTH)), 401, "unauthorized")

    # A malformed edit keeps the last good keys rather than locking everyone out (or letting everyone in).
    write_tenants(tenants_file, "[[tenants.alpha.keys]]\nsha256 = 'not-a-hash'\n")
    time.sleep(1.5)
    assert tc.get("/v1/jobs", headers=bearer(new_key)).status_code == 200
    # Removing every key locks callers out; it never turns auth off.
    write_tenants(tenants_file, "[defaults]\nmax_files = 10\n")
    assert eventually(lambda: tc.get("/v1/jobs", headers=bearer(new_key)).status_code == 401, timeout=30)
    assert_error(tc.get("/v1/jobs"), 401, "unauthorized")


def all_of_redis(redis: Any) -> bytes:
    """Every key and value in Redis as bytes, whatever their types."""
    dump = bytearray()
    for key in redis.scan_iter():
        dump += key
        kind = redis.type(key)
        if kind == b"string":
            dump += redis.get(key) or b""
        elif kind == b"hash":
            for k, v in redis.hgetall(key).items():
                dump += k + v
        elif kind in (b"set",):
            dump += b"".join(redis.smembers(key))
        elif kind == b"zset":
            dump += b"".join(redis.zrange(key, 0, -1))
        elif kind == b"list":
            dump += b"".join(redis.lrange(key, 0, -1))
        elif kind == b"stream":
            for _id, fields in redis.xrange(key):
                dump += b"".join(k + v for k, v in fields.items())
    return bytes(dump)


def test_keys_are_kept_as_hashes_only(make_client, tenants_file, settings, redis, model_path):  # type: ignore[no-untyped-def]
    plain = "ftj_plain-env-key-0005"
    tc = make_client(tenants_file=tenants_file, api_keys={plain: "beta"})
    for key in (SUBMITTER, plain):
        file_id = upload(tc, jsonl(ROWS["text"]), headers=bearer(key)).json()["id"]
        created = tc.post("/v1/jobs", json={"model": model_path, "training_file": file_id}, headers=bearer(key))
        assert created.status_code == 201, created.text
    assert tc.get("/v1/jobs", headers=bearer(plain)).json()["data"][0]["tenant"] == "beta"
    dump = all_of_redis(redis)
    assert dump  # the jobs, files and rate state are there
    source = tc.app.state.tenants  # type: ignore[attr-defined]
    for key in (READER, SUBMITTER, BOTH, plain):
        assert key.encode() not in dump
        assert key not in repr(tc.app.state.settings)  # type: ignore[attr-defined]
        assert key not in repr(vars(source)) and key not in repr(vars(source.current()))
    assert key_hash(plain) in source.hashed_keys


def test_keys_new_prints_a_key_and_lines_that_work(make_client, tmp_path):  # type: ignore[no-untyped-def]
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        assert ftjobs_main(["keys", "new", "--tenant", "gamma", "--scopes", "read", "--name", "viewer"]) == 0
    key, _, toml = out.getvalue().strip().partition("\n")
    assert key.startswith("ftj_") and len(key) > 40 and key not in toml
    path = tmp_path / "tenants.toml"
    write_tenants(path, toml)
    tc = make_client(tenants_file=path)
    assert tc.get("/v1/jobs", headers=bearer(key)).status_code == 200
    assert_error(upload(tc, jsonl(ROWS["text"]), headers=bearer(key)), 403, "insufficient_scope", param="submit")
    with contextlib.redirect_stderr(io.StringIO()), pytest.raises(SystemExit):
        ftjobs_main(["keys", "new", "--tenant", "gamma", "--scopes", "read,root"])


def test_env_keys_get_read_and_submit(make_client, model_path):  # type: ignore[no-untyped-def]
    tc = make_client(api_keys={"key-env": "delta"})
    file_id = upload(tc, jsonl(ROWS["text"]), headers=bearer("key-env")).json()["id"]
    job = {"model": model_path, "training_file": file_id}
    assert tc.post("/v1/jobs", json=job, headers=bearer("key-env")).status_code == 201
    assert tc.get("/v1/jobs", headers=bearer("key-env")).json()["data"][0]["tenant"] == "delta"


def test_openapi_declares_403_and_429(http):  # type: ignore[no-untyped-def]
    spec = http.get("/openapi.json").json()
    for path, methods in spec["paths"].items():
        if not path.startswith("/v1/"):
            continue
        for method, operation in methods.items():
            assert {"401", "403", "429"} <= set(operation["responses"]), (method, path)
            assert {"Retry-After", "x-ratelimit-limit"} <= set(operation["responses"]["429"]["headers"])
    created = spec["paths"]["/v1/jobs"]["post"]["responses"]["429"]["description"]
    assert "quota_exceeded" in created and "rate_limited" in created
