"""Parquet uploads (the optional `parquet` extra: pyarrow), converted to JSONL rows and checked like JSONL.

A Parquet file's footer (its schema and where the row groups are) is at the end, so the upload is
spooled to a temporary file as it arrives; `finish()` then reads it in record batches of BATCH_ROWS
rows, so memory is bounded by a batch (and pyarrow's one row group), not by the file. Each row becomes
one JSONL line exactly as a JSONL upload would hold it: nested columns (`messages` as
list<struct<role, content>>) become arrays of objects, and a null cell is an absent key (Parquet has a
fixed schema, so "absent" is written as null) except `label`, where null means an unlabelled row.
Problems are numbered by the 1-based row of the file. pyarrow is imported only when a Parquet file
arrives; without it the upload is refused with 415 `unsupported_format`.
"""

from __future__ import annotations

import base64
import datetime
import decimal
import json
import os
import tempfile
from typing import IO, Any

from ftjobs.client.models import FileProblem
from ftjobs.service.errors import FileTooLarge, InvalidFile, UnsupportedFormat
from ftjobs.service.readers import MAX_LINE_BYTES, Reader, Sink, media_type
from ftjobs.service.validation import UploadSummary

MAGIC = b"PAR1"  # the first (and last) 4 bytes of every Parquet file
BATCH_ROWS = 256
MAX_EXPANSION = 10  # the JSONL may be this many times the (compressed) upload limit
MEDIA_TYPES = frozenset({"application/vnd.apache.parquet", "application/x-parquet", "application/parquet"})
KEEP_NULL = frozenset({"label"})  # a null label is reported (label_missing), not dropped


def is_parquet(filename: str, content_type: str | None = None, head: bytes = b"") -> bool:
    """By name (`.parquet`, `.pq`), Content-Type, or the magic bytes the file starts with."""
    name = filename.lower()
    return name.endswith((".parquet", ".pq")) or media_type(content_type) in MEDIA_TYPES or head[:4] == MAGIC


def _json_value(value: Any) -> Any:
    """A pyarrow Python value as JSON would hold it; nulls inside objects are absent keys."""
    if isinstance(value, dict):
        return {k: _json_value(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        return [_json_value(v) for v in value]
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")  # a binary column holding text, as some writers emit
        except UnicodeDecodeError:
            return base64.b64encode(value).decode("ascii")
    if isinstance(value, datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    if isinstance(value, decimal.Decimal):
        return str(value)
    return value


def parquet_row(row: dict[str, Any]) -> dict[str, Any]:
    """One Parquet row (from `to_pylist`) as the JSON object a JSONL upload would have."""
    return {k: _json_value(v) for k, v in row.items() if v is not None or k in KEEP_NULL}


class ParquetReader(Reader):
    """Spools the upload to `tmp_dir`, then converts it batch by batch in `finish()`."""

    source_format = "parquet"
    unit = "row"

    def __init__(self, max_bytes: int, sink: Sink | None = None, tmp_dir: str | None = None) -> None:
        super().__init__(max_bytes, sink)
        if tmp_dir is not None:
            os.makedirs(tmp_dir, exist_ok=True)
        self._tmp: IO[bytes] | None = tempfile.NamedTemporaryFile(  # noqa: SIM115 - closed in close()
            prefix="upload-", suffix=".parquet", dir=tmp_dir, delete=False
        )
        self.path = self._tmp.name

    def feed(self, data: bytes) -> None:
        self.bytes += len(data)
        if self.bytes > self.max_bytes:
            raise FileTooLarge(f"The file exceeds the upload limit of {self.max_bytes} bytes.", param="file")
        assert self._tmp is not None, "reader already closed"
        self._tmp.write(data)

    def finish(self, filename: str) -> UploadSummary:
        assert self._tmp is not None, "reader already closed"
        self._tmp.close()
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            raise UnsupportedFormat(
                f"{filename}: Parquet uploads need pyarrow on the API server (install ftjobs[parquet]); "
                "upload JSONL or CSV instead.",
                param="file",
            ) from None
        try:
            parquet = pq.ParquetFile(self.path)
        except (pa.ArrowException, OSError) as exc:
            raise self._invalid(filename, f"not a readable Parquet file ({_short(exc)})") from None
        with parquet:
            batches = parquet.iter_batches(batch_size=BATCH_ROWS)
            row_no = 0
            while True:
                try:
                    batch = next(batches, None)
                except (pa.ArrowException, OSError) as exc:  # a corrupt page after the footer was read
                    self.rows.rows += 1
                    self.rows.problem(row_no + 1, "invalid_parquet", f"cannot be read ({_short(exc)})")
                    break
                if batch is None:
                    break
                for row in batch.to_pylist():
                    row_no += 1
                    self._row(row_no, parquet_row(row))
        fmt = self.rows.finish(filename)
        return UploadSummary(self.rows.rows, self.stored_bytes, self._sha.hexdigest(), fmt, self.rows.warnings())

    def _row(self, row_no: int, row: dict[str, Any]) -> None:
        self.rows.rows += 1
        problems = self.rows.problem_count
        self.rows.check(row_no, row)
        if self.rows.problem_count != problems:
            return
        line = json.dumps(row, ensure_ascii=False).encode() + b"\n"
        if len(line) > MAX_LINE_BYTES:
            return self.rows.problem(row_no, "line_too_long", f"longer than {MAX_LINE_BYTES} bytes as JSON")
        if self.stored_bytes + len(line) > MAX_EXPANSION * self.max_bytes:
            raise FileTooLarge(
                f"{row_no} rows of the Parquet file already exceed {MAX_EXPANSION * self.max_bytes} bytes "
                f"as JSONL ({MAX_EXPANSION}x the upload limit).",
                param="file",
            )
        self.store(line)

    def _invalid(self, filename: str, message: str) -> InvalidFile:
        return InvalidFile(
            f"{filename}: {message}",
            param="file",
            details=[FileProblem(line=None, field=None, code="invalid_parquet", message=message)],
            total=1,
        )

    def line_map(self) -> dict[str, Any]:
        """Stored row n is Parquet row n."""
        return {"source_format": "parquet"}

    def close(self) -> None:
        if self._tmp is not None:
            self._tmp.close()
            self._tmp = None
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass


def _short(exc: BaseException, limit: int = 200) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
