"""Parquet uploads: converted to the same JSONL rows as the equivalent JSONL upload, problems numbered by row."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ftjobs.client.models import JobStatus
from ftjobs.core.keys import file_lines_path, file_path
from ftjobs.core.storage import Storage
from tests.service.conftest import ROWS, assert_error, jsonl, upload
from tests.service.test_files import stored_files

CHATS = [
    *ROWS["messages"],
    {  # a struct field one message has and the others lack: null in Parquet, absent again in the JSONL
        "messages": [
            {"role": "user", "content": "name?"},
            {"role": "assistant", "content": "ftjobs", "name": "bot"},
        ]
    },
]
LABELLED = [{"text": f"message {i}", "label": "spam" if i % 3 else "ham", "id": i} for i in range(600)]


def parquet(rows: list[dict[str, Any]], row_group_size: int | None = None) -> bytes:
    out = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), out, row_group_size=row_group_size)
    return out.getvalue()


def stored_rows(settings, file_id: str) -> list[dict[str, Any]]:  # type: ignore[no-untyped-def]
    with Storage(settings.storage_url).open(file_path("default", file_id)) as fh:
        return [json.loads(line) for line in fh.read().decode().splitlines()]


@pytest.mark.parametrize("rows", [LABELLED, CHATS], ids=["text_label", "messages"])
def test_parquet_upload_matches_its_jsonl_equivalent(http, settings, rows):  # type: ignore[no-untyped-def]
    # Row groups of 100 over 600 rows: several row groups and record batches.
    content = parquet(rows, row_group_size=100)
    assert content[:4] == b"PAR1"
    from_parquet = upload(http, content, filename="train.parquet")
    assert from_parquet.status_code == 201, from_parquet.text
    from_jsonl = upload(http, jsonl(rows)).json()
    file = from_parquet.json()
    assert file["source_format"] == "parquet"
    same = ("rows", "format", "warnings", "warning_details")
    assert {k: file[k] for k in same} == {k: from_jsonl[k] for k in same}
    assert stored_rows(settings, file["id"]) == rows == stored_rows(settings, from_jsonl["id"])
    profiles = [http.get(f"/v1/files/{f['id']}/profile").json() for f in (file, from_jsonl)]
    assert profiles[0].pop("file_id") == file["id"]
    profiles[1].pop("file_id")
    assert profiles[0] == profiles[1]
    lines = json.loads(Storage(settings.storage_url).open(file_lines_path("default", file["id"])).read())
    assert lines == {"source_format": "parquet"}


def test_parquet_is_recognised_by_its_magic_bytes(http, settings):  # type: ignore[no-untyped-def]
    file = upload(http, parquet(ROWS["source_target"]), filename="data.bin").json()
    assert (file["source_format"], file["format"], file["rows"]) == ("parquet", "source_target", 2)
    assert stored_rows(settings, file["id"]) == ROWS["source_target"]


def test_a_bad_row_names_its_row_and_field(http, settings):  # type: ignore[no-untyped-def]
    rows = [dict(r) for r in LABELLED[:5]]
    rows[2]["label"] = None  # row 3
    rows[4]["text"] = "  "  # row 5
    error = assert_error(upload(http, parquet(rows), filename="bad.parquet"), 422, "invalid_file", param="row 3")
    assert [(p["line"], p["field"], p["code"]) for p in error["details"]] == [
        (3, "label", "label_missing"),
        (5, "text", "empty_content"),
    ]
    assert 'row 3: "label" is empty' in error["message"] and error["total"] == 2
    assert stored_files(settings) == []


@pytest.mark.parametrize(
    "content",
    [
        b"PAR1 this is not parquet PAR1",
        parquet(LABELLED)[:-20],  # cut inside the footer
        b"",
    ],
    ids=["garbage", "truncated", "empty"],
)
def test_a_corrupt_parquet_file_is_a_422(http, settings, content):  # type: ignore[no-untyped-def]
    error = assert_error(upload(http, content, filename="x.parquet"), 422, "invalid_file", param="file")
    assert error["details"][0]["code"] == "invalid_parquet"
    assert "not a readable Parquet file" in error["message"]
    assert stored_files(settings) == []  # neither the dataset nor the spooled temporary file
    assert not list((Path(settings.data_dir) / "tmp").glob("*"))


def test_a_parquet_file_over_the_limit_is_413_and_leaves_nothing(make_client, settings):  # type: ignore[no-untyped-def]
    content = parquet(LABELLED)
    small = make_client(max_upload_bytes=len(content) - 1)
    assert_error(upload(small, content, filename="big.parquet"), 413, "file_too_large", param="file")
    assert stored_files(settings) == [] and not list((Path(settings.data_dir) / "tmp").glob("*"))


def test_without_pyarrow_parquet_is_refused_with_415(http, monkeypatch):  # type: ignore[no-untyped-def]
    content = parquet(LABELLED[:4])
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # as on a server installed without the parquet extra
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    error = assert_error(upload(http, content, filename="x.parquet"), 415, "unsupported_format", param="file")
    assert "pyarrow" in error["message"] and "ftjobs[parquet]" in error["message"]
    monkeypatch.undo()
    assert upload(http, jsonl(LABELLED[:4])).status_code == 201  # JSONL is unaffected


def test_a_job_trains_from_a_parquet_upload(client, worker, tiny_causal_lm, tmp_path):  # type: ignore[no-untyped-def]
    path = tmp_path / "train.parquet"
    path.write_bytes(parquet(ROWS["prompt_completion"] * 8))
    train = client.files.upload(path)
    assert (train.source_format, train.format, train.rows) == ("parquet", "prompt_completion", 16)
    job = client.jobs.create(
        model=str(tiny_causal_lm),
        training_file=train.id,
        hyperparameters={"max_steps": 2, "batch_size": 4, "max_seq_length": 16},
    )
    job = client.jobs.wait(job.id, timeout=120)
    assert job.status == JobStatus.succeeded, (job.error, worker.output()[-3000:])
    assert job.progress.step == 2
