"""Uploads are all or nothing: a body cut short, a client gone or an API killed leaves no record and no file."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from ftjobs.core.keys import file_path
from ftjobs.core.storage import Storage
from ftjobs.launch.embedded import free_port
from tests.conftest import REPO
from tests.service.conftest import assert_error, jsonl

BOUNDARY = b"ftjobs-test-boundary"
ROWS_600 = jsonl([{"text": f"row {i}", "label": "spam" if i % 2 else "ham"} for i in range(600)])


def head(filename: str = "train.jsonl") -> bytes:
    """The multipart body up to the file part's data."""
    return (
        b"--" + BOUNDARY + b"\r\n"
        b'Content-Disposition: form-data; name="file"; filename="' + filename.encode() + b'"\r\n'
        b"Content-Type: application/octet-stream\r\n\r\n"
    )


TAIL = b"\r\n--" + BOUNDARY + b"--\r\n"
CONTENT_TYPE = "multipart/form-data; boundary=" + BOUNDARY.decode()


def first_lines(n: int) -> bytes:
    return b"".join(ROWS_600.splitlines(keepends=True)[:n])


def leftovers(data_dir: Path) -> list[Path]:
    """Every file under the data folder: the store (datasets, temporaries) and the spool folder."""
    return [p for p in data_dir.rglob("*") if p.is_file()] if data_dir.exists() else []


def wait_for(check: Callable[[], bool], timeout: float = 20, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


# ----------------------------------------------------------------------------- bodies cut short


@pytest.mark.parametrize(
    "body",
    [
        head() + first_lines(100),  # 100 of 600 lines, then the body just ends
        head() + ROWS_600,  # every line, but the file part never closes
        head() + ROWS_600 + TAIL[:-6],  # cut inside the closing boundary
        head() + ROWS_600 + b"\r\n--" + BOUNDARY + b"\r\n",  # a part boundary, then nothing
        head(),  # right after the part's headers
        head()[:40],  # inside the part's headers
        b"",
    ],
    ids=[
        "100-of-600-lines",
        "no-closing-boundary",
        "inside-boundary",
        "part-boundary",
        "headers",
        "mid-headers",
        "empty",
    ],
)
def test_a_body_cut_short_is_400_and_leaves_nothing(http, settings, body):  # type: ignore[no-untyped-def]
    response = http.post("/v1/files", content=body, headers={"content-type": CONTENT_TYPE})
    error = assert_error(response, 400, "malformed_body", param="file")
    assert "closing boundary" in error["message"]
    assert http.get("/v1/files").json()["data"] == []
    assert leftovers(Path(settings.data_dir)) == []  # no dataset, no temporary, no spool


def test_a_parquet_upload_cut_short_leaves_no_spool(http, settings):  # type: ignore[no-untyped-def]
    # Over 256 KiB: the reader has spooled data to <data_dir>/tmp before the body ends.
    body = head("big.parquet") + b"PAR1" + os.urandom(400 * 1024)
    response = http.post("/v1/files", content=body, headers={"content-type": CONTENT_TYPE})
    assert_error(response, 400, "malformed_body", param="file")
    assert http.get("/v1/files").json()["data"] == []
    assert leftovers(Path(settings.data_dir)) == []


def test_a_whole_body_with_an_epilogue_is_accepted(http):  # type: ignore[no-untyped-def]
    for epilogue in (b"", b"trailing junk the RFC calls an epilogue\r\n"):
        body = head() + ROWS_600 + TAIL + epilogue
        response = http.post("/v1/files", content=body, headers={"content-type": CONTENT_TYPE})
        assert response.status_code == 201, response.text
        assert response.json()["rows"] == 600 and response.json()["bytes"] == len(ROWS_600)


# ----------------------------------------------------------------------------- a real server


@contextmanager
def api_server(env: dict[str, str], log: Path, **extra: str) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """`uvicorn --factory service.main:app_from_env` on a free port; yields (process, base URL)."""
    port = free_port()
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--factory", "ftjobs.service.main:app_from_env", "--port", str(port)],
            cwd=REPO,
            env={**os.environ, **env, **extra, "PYTHONUNBUFFERED": "1"},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:

        def up() -> bool:
            assert proc.poll() is None, log.read_text()
            try:
                return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        wait_for(up, what="the API to start")
        yield proc, url
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def start_upload(url: str, filename: str, body_bytes: int, sent: bytes) -> socket.socket:
    """A raw HTTP upload announcing `body_bytes` of body, of which only `sent` is sent (the socket stays open)."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    request = (
        f"POST /v1/files HTTP/1.1\r\nHost: {host}\r\nContent-Type: {CONTENT_TYPE}\r\n"
        f"Content-Length: {body_bytes}\r\n\r\n"
    )
    sock.sendall(request.encode() + head(filename) + sent)
    return sock


def temporaries(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*.tmp-*") if p.is_file()] if folder.exists() else []


def test_a_client_gone_mid_upload_leaves_nothing(env, tmp_path):  # type: ignore[no-untyped-def]
    data_dir = Path(env["FTJOBS_DATA_DIR"])
    files_dir = data_dir / "store" / "default" / "files"
    log = tmp_path / "api.log"
    with api_server(env, log) as (_, url):
        rows = ROWS_600 * 100  # ~2 MB announced, ~600 KB sent: the server has written some of it
        sock = start_upload(url, "train.jsonl", len(head()) + len(rows) + len(TAIL), rows[: 600 * 1024])
        wait_for(lambda: any(p.stat().st_size for p in temporaries(files_dir)), what="the upload to be written")
        sock.close()  # the client goes away mid-body
        wait_for(lambda: not leftovers(data_dir / "store"), what="the temporary file to go")
        assert not leftovers(data_dir)
        assert httpx.get(f"{url}/v1/files").json()["data"] == []
    assert "Traceback" not in log.read_text()


def test_a_killed_api_leaves_temporaries_the_next_one_sweeps(env, tmp_path):  # type: ignore[no-untyped-def]
    data_dir = Path(env["FTJOBS_DATA_DIR"])
    spool = data_dir / "tmp"
    log = tmp_path / "api.log"
    with api_server(env, log) as (proc, url):
        done = httpx.post(f"{url}/v1/files", files={"file": ("done.jsonl", ROWS_600)}).json()
        data = b"PAR1" + os.urandom(600 * 1024)  # a Parquet upload: spooled as well as stored
        sock = start_upload(url, "big.parquet", len(head("big.parquet")) + 10 * len(data), data)
        wait_for(lambda: any(p.stat().st_size for p in spool.glob("*")), what="the upload to be spooled")
        assert temporaries(data_dir / "store")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        sock.close()
    left = temporaries(data_dir / "store") + list(spool.glob("*"))
    assert len(left) == 2  # the killed API's half-written dataset and its Parquet spool
    with api_server(env, log, FTJOBS_TEMP_MAX_AGE_S="0") as (_, url):
        wait_for(lambda: not any(p.exists() for p in left), what="the sweep at startup")
        assert [f["id"] for f in httpx.get(f"{url}/v1/files").json()["data"]] == [done["id"]]
        stored = Storage(f"file://{data_dir}/store")
        assert stored.exists(file_path("default", done["id"]))  # committed files are not temporaries
        assert httpx.get(f"{url}/v1/files/{done['id']}/profile").status_code == 200


def test_an_upload_whose_partial_file_was_swept_is_a_400(env, tmp_path):  # type: ignore[no-untyped-def]
    # A client stalled longer than FTJOBS_TEMP_MAX_AGE_S: another replica's sweep took its partial file.
    data_dir = Path(env["FTJOBS_DATA_DIR"])
    files_dir = data_dir / "store" / "default" / "files"
    with api_server(env, tmp_path / "api.log") as (_, url):
        rows = ROWS_600 * 100
        sock = start_upload(url, "train.jsonl", len(head()) + len(rows) + len(TAIL), rows[: 600 * 1024])
        wait_for(lambda: any(p.stat().st_size for p in temporaries(files_dir)), what="the upload to be written")
        for partial in temporaries(files_dir):
            partial.unlink()
        sock.sendall(rows[600 * 1024 :] + TAIL)
        reply = b""
        while b"\r\n\r\n" not in reply or not reply.rstrip().endswith(b"}"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            reply += chunk
        sock.close()
        status, _, body = reply.partition(b"\r\n\r\n")
        assert status.split()[1] == b"400", reply[:500]
        assert b'"malformed_body"' in body and b'"param":"file"' in body, body
        assert httpx.get(f"{url}/v1/files").json()["data"] == []
        assert not leftovers(data_dir / "store")
