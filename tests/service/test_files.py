"""POST/GET /v1/files: streamed JSONL validation, atomic storage, pagination."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from ftjobs.core.keys import file_path
from ftjobs.core.storage import Storage
from tests.service.conftest import ROWS, assert_error, jsonl, upload


def stored_files(settings) -> list[Path]:  # type: ignore[no-untyped-def]
    root = Path(Storage(settings.storage_url).root)
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


@pytest.mark.parametrize("fmt", sorted(ROWS))
def test_upload_detects_each_format(http, settings, fmt):  # type: ignore[no-untyped-def]
    content = jsonl(ROWS[fmt])
    response = upload(http, content, filename=f"{fmt}.jsonl")
    assert response.status_code == 201, response.text
    file = response.json()
    assert file["format"] == fmt
    assert file["rows"] == len(ROWS[fmt])
    assert file["bytes"] == len(content)
    assert file["sha256"] == hashlib.sha256(content).hexdigest()
    assert file["filename"] == f"{fmt}.jsonl" and file["tenant"] == "default"
    assert file["id"].startswith("file-") and file["warnings"] == []
    with Storage(settings.storage_url).open(file_path("default", file["id"])) as fh:
        assert fh.read() == content
    assert http.get(f"/v1/files/{file['id']}").json() == file


def test_blank_lines_crlf_and_missing_final_newline_are_fine(http):  # type: ignore[no-untyped-def]
    content = b'\xef\xbb\xbf{"text": "a"}\r\n\r\n   \n{"text": "b"}'
    file = upload(http, content).json()
    assert (file["rows"], file["format"]) == (2, "text")


def test_malformed_json_names_the_line(http, settings):  # type: ignore[no-untyped-def]
    content = jsonl(ROWS["prompt_completion"]) + b'{"prompt": "a", "completion": \n'
    error = assert_error(upload(http, content), 422, "invalid_file", param="line 3")
    assert "line 3: invalid JSON (Expecting value)" in error["message"]
    assert stored_files(settings) == []  # nothing half-written is left behind


def test_every_problem_is_listed_with_its_line(http):  # type: ignore[no-untyped-def]
    lines = [
        '{"prompt": "a", "completion": "b"}',
        '{"prompt": "a"}',
        "[1, 2]",
        '{"prompt": "a", "completion": 3}',
        '{"messages": [{"role": "bot", "content": "x"}]}',
        '{"nothing": "known"}',
        "",
    ]
    error = assert_error(upload(http, "\n".join(lines).encode()), 422, "invalid_file", param="line 2")
    message = error["message"]
    assert "5 problems" in message
    assert 'line 2: missing field "completion"' in message
    assert "line 3: expected a JSON object, got array" in message
    assert 'line 4: "completion" must be a string, got number' in message
    assert "line 5: messages[0].role must be one of system, user, assistant" in message
    assert "line 6: unknown row shape" in message


def test_at_most_twenty_problems_are_listed_but_all_counted(http):  # type: ignore[no-untyped-def]
    error = assert_error(upload(http, b"nope\n" * 50), 422, "invalid_file", param="line 1")
    assert "50 problems" in error["message"] and "line 20:" in error["message"]
    assert "line 21:" not in error["message"] and "and 30 more" in error["message"]


def test_mixed_formats_are_rejected(http):  # type: ignore[no-untyped-def]
    content = jsonl(ROWS["text_label"] + ROWS["prompt_completion"])
    error = assert_error(upload(http, content), 422, "invalid_file", param="line 3")
    assert "prompt_completion differs from text_label (line 1)" in error["message"]


def test_messages_must_be_a_non_empty_list(http):  # type: ignore[no-untyped-def]
    error = assert_error(upload(http, b'{"messages": []}\n'), 422, "invalid_file", param="line 1")
    assert '"messages" must be a non-empty array' in error["message"]


@pytest.mark.parametrize("content", [b"", b"\n\n   \n"])
def test_empty_file_is_rejected(http, content):  # type: ignore[no-untyped-def]
    error = assert_error(upload(http, content), 422, "invalid_file", param="file")
    assert "empty" in error["message"]


def test_invalid_utf8_is_a_line_problem(http):  # type: ignore[no-untyped-def]
    error = assert_error(
        upload(http, b'{"text": "a"}\n{"text": "\xff"}\n'), 422, "invalid_file", param="line 2"
    )
    assert "not valid UTF-8" in error["message"]


def test_fixable_problems_become_warnings(http):  # type: ignore[no-untyped-def]
    rows = [{"text": "a", "label": " spam "}, {"text": "b", "label": "ham"}, {"text": "b", "label": "ham"}]
    response = upload(http, jsonl(rows))
    assert response.status_code == 201
    warnings = response.json()["warnings"]
    assert "1 duplicate row(s)" in warnings
    assert '1 row(s) with leading/trailing whitespace in "label"' in warnings


def test_over_the_limit_is_413_while_streaming(make_client, settings):  # type: ignore[no-untyped-def]
    small = make_client(max_upload_bytes=100)
    content = jsonl(ROWS["text"] * 20)  # ~400 bytes: under the Content-Length pre-check, over the limit
    assert_error(upload(small, content), 413, "file_too_large", param="file")
    big = jsonl(ROWS["text"] * 10_000)  # over the Content-Length pre-check: refused before reading
    assert_error(upload(small, big), 413, "file_too_large", param="file")
    assert upload(small, jsonl(ROWS["text"][:1])).status_code == 201
    datasets = [p for p in stored_files(settings) if not p.name.endswith(".profile.json")]
    assert len(datasets) == 1  # the refused uploads left no (temporary) file


def test_upload_needs_a_multipart_file_field(http):  # type: ignore[no-untyped-def]
    assert_error(http.post("/v1/files", json={"file": "x"}), 415, "unsupported_media_type")
    response = http.post("/v1/files", files={"other": ("a.jsonl", b'{"text": "a"}\n')})
    assert_error(response, 422, "invalid_request", param="file")
    response = http.post("/v1/files", files={"file": ("a.jsonl", b'{"text": "a"}\n')}, data={"purpose": "x"})
    assert_error(response, 422, "invalid_request", param="purpose")


def test_get_unknown_file_is_404(http):  # type: ignore[no-untyped-def]
    assert_error(http.get("/v1/files/file-" + "0" * 20), 404, "file_not_found")
    assert_error(http.get("/v1/files/not-an-id"), 404, "file_not_found")


def test_list_files_paginates_newest_first(http):  # type: ignore[no-untyped-def]
    ids = [upload(http, jsonl(ROWS["text"]), filename=f"{i}.jsonl").json()["id"] for i in range(3)]
    page = http.get("/v1/files", params={"limit": 2}).json()
    assert [f["id"] for f in page["data"]] == ids[::-1][:2]
    assert page["has_more"] is True and page["last_id"] == ids[1]
    page = http.get("/v1/files", params={"limit": 2, "after": page["last_id"]}).json()
    assert [f["id"] for f in page["data"]] == [ids[0]]
    assert page["has_more"] is False
    assert len(http.get("/v1/files").json()["data"]) == 3
    assert_error(http.get("/v1/files", params={"limit": 0}), 422, "validation_error", param="limit")
    assert_error(http.get("/v1/files", params={"after": "x"}), 422, "validation_error", param="after")
