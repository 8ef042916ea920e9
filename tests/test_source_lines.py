"""A job's data errors cite the line of the file the user uploaded (a CSV's line), not the stored JSONL's."""

from __future__ import annotations

import json
from pathlib import Path

from ftjobs.client.models import JobStatus
from ftjobs.jobs.data.read import LineMap, read_jsonl
from ftjobs.service.readers import MAX_LINE_BREAKS, CsvReader

# CSV lines: 1 header, 2 row 1, 3-4 row 2 (a quoted cell over two lines), 5 blank, 6 row 3,
# 7-9 row 4 (three lines), 10 row 5.
CSV = (
    b"text,label\r\n"
    b"plain row,spam\r\n"
    b'"two\r\nlines",ham\r\n'
    b"\r\n"
    b"after a blank line,spam\r\n"
    b'"three\nphysical\nlines",ham\n'
    b"last,spam\n"
)
CSV_LINES = [2, 3, 6, 7, 10]


def convert(content: bytes, tmp_path: Path) -> tuple[Path, Path]:
    """What the API stores for a CSV upload: the JSONL rows and the line map."""
    stored = bytearray()
    reader = CsvReader(max_bytes=len(content), sink=stored.extend)
    reader.feed(content)
    reader.finish("train.csv")
    rows, lines = tmp_path / "rows.jsonl", tmp_path / "rows.lines.json"
    rows.write_bytes(bytes(stored))
    lines.write_text(json.dumps(reader.line_map()))
    return rows, lines


def test_each_stored_row_cites_the_csv_line_it_starts_on(tmp_path: Path) -> None:
    rows_path, lines_path = convert(CSV, tmp_path)
    rows = read_jsonl(rows_path, "training_file", LineMap.load(lines_path))
    assert [r.line for r in rows] == CSV_LINES
    assert rows[3].data == {"text": "three\nphysical\nlines", "label": "ham"}
    assert rows[3].where() == "training_file CSV line 7"
    assert [r.line for r in read_jsonl(rows_path, "training_file")] == [1, 2, 3, 4, 5]  # no map: JSONL lines
    # Only the rows where the offset changes are kept.
    assert json.loads(lines_path.read_text())["lines"] == [[1, 2], [3, 6], [5, 10]]


def test_a_plain_csv_keeps_one_pair_and_a_very_irregular_one_stays_bounded(tmp_path: Path) -> None:
    plain = b"prompt,completion\n" + b"".join(b"p%d,c%d\n" % (i, i) for i in range(1000))
    rows_path, lines_path = convert(plain, tmp_path)
    assert json.loads(lines_path.read_text()) == {"source_format": "csv", "lines": [[1, 2]]}
    assert read_jsonl(rows_path, "f", LineMap.load(lines_path))[-1].where() == "f CSV line 1001"

    n = MAX_LINE_BREAKS + 5  # every row spans two lines: one pair per row
    irregular = b"text\n" + b'"a\nb"\n' * n
    rows_path, lines_path = convert(irregular, tmp_path)
    line_map = LineMap.load(lines_path)
    assert len(line_map.lines) == MAX_LINE_BREAKS and line_map.mapped_rows == MAX_LINE_BREAKS
    assert line_map.locate(MAX_LINE_BREAKS) == ("CSV line", 2 * MAX_LINE_BREAKS)
    assert line_map.locate(n) == ("CSV row", n)  # past the map: the row's index, never a wrong line


def test_a_worker_side_error_names_the_csv_line(client, worker, tiny_causal_lm, tmp_path):  # type: ignore[no-untyped-def]
    train = tmp_path / "train.csv"
    train.write_bytes(CSV)
    valid = tmp_path / "valid.csv"
    # The label of CSV line 7 passes the upload's checks but is not a training label: the job finds it.
    valid.write_bytes(b'text,label\nok,spam\n"a message\nover\nthree lines",ham\n"one more",spam\nbad,eggs\n')
    train_file, valid_file = client.files.upload(train), client.files.upload(valid)
    assert (valid_file.source_format, valid_file.rows) == ("csv", 4)
    job = client.jobs.create(
        model=str(tiny_causal_lm),
        task="classification",
        training_file=train_file.id,
        validation_file=valid_file.id,
        hyperparameters={"max_steps": 1},
    )
    job = client.jobs.wait(job.id, timeout=120)
    assert job.status == JobStatus.failed, worker.output()[-3000:]
    assert job.error is not None and job.error.code == "invalid_data", job.error
    assert job.error.param == "validation_file CSV line 7"
    assert job.error.message.startswith("validation_file CSV line 7: label 'eggs' does not occur")
