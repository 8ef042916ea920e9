"""Upload validation: one hand-made bad file per problem code, structured warnings, CSV, bounded-memory streaming."""

from __future__ import annotations

import asyncio
import json
import resource
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from ftjobs.core.keys import file_path
from ftjobs.core.storage import Storage
from tests.conftest import REPO
from tests.service.conftest import ROWS, assert_error, jsonl, upload

OK_CHAT = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}

# code -> (file content, the problem's line, its field)
BAD_FILES: dict[str, tuple[bytes, int, str | None]] = {
    "invalid_json": (b'{"text": "a"}\n{"text": \n', 2, None),
    "invalid_utf8": (b'{"text": "a"}\n{"text": "\xff"}\n', 2, None),
    "not_an_object": (b'{"text": "a"}\n["text"]\n', 2, None),
    "unknown_shape": (b'{"body": "a"}\n', 1, None),
    "missing_field": (b'{"prompt": "a", "completion": "b"}\n{"prompt": "a"}\n', 2, "completion"),
    "invalid_type": (b'{"text": "a", "label": "x"}\n{"text": "b", "label": [1]}\n', 2, "label"),
    "empty_content": (b'{"text": "a", "label": "x"}\n{"text": "  ", "label": "y"}\n', 2, "text"),
    "unknown_role": (b'{"messages": [{"role": "bot", "content": "x"}]}\n', 1, "messages[0].role"),
    "no_assistant_turn": (
        json.dumps(OK_CHAT).encode() + b'\n{"messages": [{"role": "user", "content": "x"}]}\n',
        2,
        "messages",
    ),
    "label_missing": (b'{"text": "a", "label": "x"}\n{"text": "b"}\n{"text": "c", "label": ""}\n', 2, "label"),
    "mixed_formats": (b'{"text": "a", "label": "x"}\n{"prompt": "a", "completion": "b"}\n', 2, None),
    "invalid_csv": (b'text,label\n"hello,spam\n', 2, None),
    "empty_file": (b"\n\n", 0, None),
}


@pytest.mark.parametrize("code", sorted(BAD_FILES))
def test_each_problem_has_a_code_a_line_and_a_field(http, code):  # type: ignore[no-untyped-def]
    content, line, field = BAD_FILES[code]
    filename = "bad.csv" if code == "invalid_csv" else "bad.jsonl"
    error = assert_error(upload(http, content, filename=filename), 422, "invalid_file")
    problem = error["details"][0]
    assert problem["code"] == code, error
    assert problem["line"] == (line or None) and problem["field"] == field
    assert error["param"] == (f"line {line}" if line else "file")
    assert error["total"] == len(error["details"])


def test_every_problem_is_counted_but_only_twenty_listed(http):  # type: ignore[no-untyped-def]
    lines = [b'{"text": "a", "label": "x"}'] + [b'{"text": "b"}'] * 30 + [b"nope"] * 5
    error = assert_error(upload(http, b"\n".join(lines)), 422, "invalid_file", param="line 2")
    assert error["total"] == 35 and len(error["details"]) == 20
    assert {p["code"] for p in error["details"]} == {"label_missing"}
    assert [p["line"] for p in error["details"]] == list(range(2, 22))


def test_fixable_issues_are_accepted_with_structured_warnings(http):  # type: ignore[no-untyped-def]
    rows = [
        {"text": "a", "label": " spam "},
        {"text": "b", "label": "ham"},
        {"text": "b", "label": "ham"},
        {"text": "b", "label": "ham"},
    ]
    file = upload(http, jsonl(rows)).json()
    details = {w["code"]: w for w in file["warning_details"]}
    assert details["duplicate_row"]["count"] == 2 and details["duplicate_row"]["lines"] == [3, 4]
    assert details["label_whitespace"] == {
        "code": "label_whitespace",
        "field": "label",
        "count": 1,
        "lines": [1],
        "message": '1 row(s) with leading/trailing whitespace in "label"',
    }
    assert file["warnings"] == [w["message"] for w in file["warning_details"]]
    prompts = upload(http, jsonl([{"prompt": "", "completion": "x"}, {"prompt": "a", "completion": "y"}])).json()
    assert prompts["warning_details"][0]["code"] == "empty_optional_field"
    assert prompts["warning_details"][0]["field"] == "prompt"


def test_csv_is_converted_to_jsonl_rows(http, settings):  # type: ignore[no-untyped-def]
    content = b'\xef\xbb\xbfText,Label,extra\r\n"win, a ""prize""",spam,1\r\n"two\r\nlines",ham,2\r\nhello,ham,3\r\n'
    response = upload(http, content, filename="sms.csv")
    assert response.status_code == 201, response.text
    file = response.json()
    assert (file["format"], file["rows"], file["source_format"]) == ("text_label", 3, "csv")
    with Storage(settings.storage_url).open(file_path("default", file["id"])) as fh:
        rows = [json.loads(line) for line in fh.read().decode().splitlines()]
    assert rows == [
        {"text": 'win, a "prize"', "label": "spam"},
        {"text": "two\nlines", "label": "ham"},
        {"text": "hello", "label": "ham"},
    ]


def test_csv_problems_use_csv_line_numbers(http):  # type: ignore[no-untyped-def]
    content = b'prompt,completion\n"a\nb",x\nc,\nd,e,f\n'
    error = assert_error(upload(http, content, filename="pc.csv"), 422, "invalid_file", param="line 4")
    assert [(p["line"], p["code"]) for p in error["details"]] == [(4, "empty_content"), (5, "invalid_csv")]
    error = assert_error(upload(http, b"a,b\n1,2\n", filename="x.csv"), 422, "invalid_file", param="line 1")
    assert error["details"][0]["code"] == "unknown_shape"


# ----------------------------------------------------------------------------- streaming


def _multipart(chunks: Iterator[bytes], filename: str) -> Iterator[bytes]:
    yield (
        b'--BOUNDARY\r\nContent-Disposition: form-data; name="file"; filename="' + filename.encode() + b'"\r\n'
        b"Content-Type: application/jsonl\r\n\r\n"
    )
    yield from chunks
    yield b"\r\n--BOUNDARY--\r\n"


def _rows(total_bytes: int) -> Iterator[bytes]:
    """~8 KB distinct rows, ~1 MiB at a time (generated on the fly: the test holds no copy of the file)."""
    filler = "lorem ipsum dolor sit amet " * 300
    sent, i = 0, 0
    while sent < total_bytes:
        lines = []
        for _ in range(128):
            lines.append(json.dumps({"text": f"{i} {filler}", "label": "spam" if i % 7 == 0 else "ham"}) + "\n")
            i += 1
        chunk = "".join(lines).encode()
        sent += len(chunk)
        yield chunk


def _asgi_post(app: Any, body: Iterator[bytes]) -> tuple[int, dict[str, Any]]:
    """POST /v1/files through the ASGI interface with a body that arrives chunk by chunk (no buffering)."""
    messages: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        chunk = next(body, None)
        return {"type": "http.request", "body": chunk or b"", "more_body": chunk is not None}

    async def send(message: dict[str, Any]) -> None:
        messages.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/files",
        "raw_path": b"/v1/files",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"content-type", b"multipart/form-data; boundary=BOUNDARY"), (b"host", b"test")],
        "client": ("127.0.0.1", 1),
        "server": ("test", 80),
        "app": app,
    }
    asyncio.run(app(scope, receive, send))
    status = next(m["status"] for m in messages if m["type"] == "http.response.start")
    payload = b"".join(m.get("body", b"") for m in messages if m["type"] == "http.response.body")
    return status, json.loads(payload)


def measure_upload(settings_json: str, size: int) -> None:
    """In a fresh process: the API's peak RSS growth while it takes a `size`-byte upload (prints JSON)."""
    from fastapi.testclient import TestClient

    from ftjobs.core.settings import Settings
    from ftjobs.service.main import create_app

    app = create_app(Settings.model_validate_json(settings_json))
    with TestClient(app):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
        status, file = _asgi_post(app, _multipart(_rows(size), "big.jsonl"))
        growth = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    print(json.dumps({"status": status, "file": file, "growth_kib": growth}))


def test_a_100_mb_upload_streams_in_bounded_memory(settings, http):  # type: ignore[no-untyped-def]
    size = 100 * 1024 * 1024
    call = f"measure_upload({settings.model_dump_json()!r}, {size})"
    code = f"from tests.service.test_validation_codes import measure_upload; {call}"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    file, growth = result["file"], result["growth_kib"] * 1024
    assert result["status"] == 201, file
    assert file["bytes"] >= size and file["rows"] >= 12_000
    assert growth < 30 * 1024 * 1024, f"peak RSS grew by {growth / 2**20:.1f} MiB for a 100 MiB upload"
    profile = http.get(f"/v1/files/{file['id']}/profile").json()
    assert profile["rows"] == file["rows"] and profile["exact_duplicates"] == 0
    print(f"\n100 MiB upload: {file['rows']} rows, peak RSS +{growth / 2**20:.1f} MiB")


def test_over_the_limit_is_413_midstream(make_client):  # type: ignore[no-untyped-def]
    small = make_client(max_upload_bytes=1024 * 1024)
    status, body = _asgi_post(small.app, _multipart(_rows(5 * 1024 * 1024), "big.jsonl"))
    assert status == 413 and body["error"]["code"] == "file_too_large"


def test_rows_are_checked_the_same_in_every_format(http):  # type: ignore[no-untyped-def]
    for fmt, rows in ROWS.items():
        assert upload(http, jsonl(rows)).status_code == 201, fmt


def test_job_data_options_round_trip_and_are_validated(http, create_job):  # type: ignore[no-untyped-def]
    job = create_job(data={"dedup": "near", "balance": "oversample", "augment": ["eda"]})
    assert job.status_code == 201, job.text
    data = http.get(f"/v1/jobs/{job.json()['id']}").json()["data"]
    assert (data["dedup"], data["balance"], data["augment"], data["normalize_text"]) == (
        "near",
        "oversample",
        ["eda"],
        False,
    )
    error = assert_error(create_job(data={"balance": "smote"}), 422, "validation_error")
    assert "data.balance" in (error["param"] or "")
    default = create_job().json()
    assert http.get(f"/v1/jobs/{default['id']}").json()["data"]["dedup"] == "none"
