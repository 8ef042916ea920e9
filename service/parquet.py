"""Parquet uploads (the optional `parquet` extra: pyarrow), converted to JSONL rows and checked like JSONL.

A Parquet file's footer (its schema and where the row groups are) is at the end, so the upload is
spooled to a temporary file as it arrives. `finish()` then checks the footer and every page header
(`service/parquet_pages.py`) before it decompresses anything: a page, a value or the file's decoded size
over the limits is refused there. It then reads each row group in record batches sized so that a batch's
decoded values stay within a budget (a few rows when values are large, up to 256), through a small read
buffer, one thread: memory is bounded by a batch, not by a row group or the file. Each row becomes
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
import struct
import tempfile
from typing import IO, Any

from ftjobs.client.models import FileProblem
from ftjobs.service.errors import FileTooLarge, InvalidFile, UnsupportedFormat
from ftjobs.service.parquet_pages import (
    BATCH_BUDGET,
    PageHeaderError,
    RowGroup,
    RowGroupPlan,
    check_sizes,
    read_footer,
)
from ftjobs.service.readers import DEFAULT_MAX_ROW_BYTES, Reader, Sink, media_type
from ftjobs.service.validation import UploadSummary

MAGIC = b"PAR1"  # the first (and last) 4 bytes of every Parquet file
MAX_FOOTER_BYTES = 4 * 1024 * 1024  # the file's metadata (schema, row groups, statistics)
READ_BUFFER_BYTES = 1024 * 1024  # compressed bytes pyarrow reads at a time (not a whole column chunk)
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

    def __init__(
        self,
        max_bytes: int,
        sink: Sink | None = None,
        tmp_dir: str | None = None,
        max_row_bytes: int = DEFAULT_MAX_ROW_BYTES,
    ) -> None:
        super().__init__(max_bytes, sink, max_row_bytes)
        if tmp_dir is not None:
            os.makedirs(tmp_dir, exist_ok=True)
        self._tmp: IO[bytes] | None = tempfile.NamedTemporaryFile(  # noqa: SIM115 - closed in close()
            prefix="upload-", suffix=".parquet", dir=tmp_dir, delete=False
        )
        self.path = self._tmp.name
        self._row_no = 0

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
        footer = self._check_footer(filename)
        options: dict[str, Any] = {"buffer_size": READ_BUFFER_BYTES, "pre_buffer": False}
        try:
            with pq.ParquetFile(self.path, thrift_string_size_limit=MAX_FOOTER_BYTES, **options) as first:
                metadata = first.metadata
            # Text columns dictionary-encoded in a row group come as dictionary arrays: a value many rows repeat
            # is held once, not once per row (check_sizes says which: never a chunk that fell back to plain).
            text = [f.name for f in metadata.schema.to_arrow_schema() if _is_text(f.type)]
            columns = [metadata.schema.column(i) for i in range(len(metadata.schema))]
            nested = frozenset(c.path for c in columns if c.max_repetition_level > 0)
        except (pa.ArrowException, OSError, UnicodeDecodeError) as exc:
            raise self._invalid(filename, f"not a readable Parquet file ({_short(exc)})") from None
        readers: dict[frozenset[str], Any] = {}  # one ParquetFile per set of dictionary columns
        try:
            with open(self.path, "rb") as fh:
                try:
                    groups = read_footer(fh, os.path.getsize(self.path), footer)
                except PageHeaderError as exc:
                    raise self._invalid(filename, f"not a readable Parquet file ({exc})") from None
                self._check_decoded_size(filename, groups)
                plans = check_sizes(fh, groups, nested, filename, self.max_row_bytes, frozenset(text))
            for plan in plans:
                if plan.dictionary not in readers:
                    try:
                        readers[plan.dictionary] = pq.ParquetFile(
                            self.path, metadata=metadata, read_dictionary=sorted(plan.dictionary), **options
                        )
                    except (pa.ArrowException, OSError) as exc:
                        raise self._invalid(filename, f"not a readable Parquet file ({_short(exc)})") from None
                if not self._read_row_group(readers[plan.dictionary], plan):
                    break
        finally:
            for reader in readers.values():
                reader.close()
            pa.default_memory_pool().release_unused()  # give the decoded batches' memory back to the system
        fmt = self.rows.finish(filename)
        return UploadSummary(self.rows.rows, self.stored_bytes, self._sha.hexdigest(), fmt, self.rows.warnings())

    def _check_footer(self, filename: str) -> int:
        """The footer's length (the 4 bytes before the closing magic) before pyarrow parses it."""
        size = os.path.getsize(self.path)
        with open(self.path, "rb") as fh:
            fh.seek(max(size - 8, 0))
            tail = fh.read(8)
        if len(tail) < 8 or tail[4:] != MAGIC:
            raise self._invalid(filename, "not a readable Parquet file (no PAR1 footer)")
        footer = struct.unpack("<i", tail[:4])[0]
        if not 0 < footer <= size - 12:  # the magic at both ends, the length
            raise self._invalid(filename, f"not a readable Parquet file (a footer of {footer} bytes)")
        if footer > MAX_FOOTER_BYTES:
            raise FileTooLarge(
                f"{filename}: its metadata (the Parquet footer) is {footer} bytes, over the limit of "
                f"{MAX_FOOTER_BYTES} bytes.",
                param="file",
            )
        return footer

    def _check_decoded_size(self, filename: str, groups: list[RowGroup]) -> None:
        """The row groups' decompressed sizes against what may be stored as JSONL."""
        limit, total = MAX_EXPANSION * self.max_bytes, 0
        for g, group in enumerate(groups):
            total += group.size
            if total > limit:
                raise FileTooLarge(
                    f"{filename}: row groups 0-{g} decompress to {total} bytes, over the limit of {limit} bytes "
                    f"({MAX_EXPANSION}x the upload limit).",
                    param="file",
                )

    def _read_row_group(self, parquet: Any, plan: RowGroupPlan) -> bool:
        """Convert one row group, `plan.batch_rows` rows at a time; False when a page cannot be read."""
        import pyarrow as pa

        self._row_no = plan.first_row - 1  # of the last row converted
        batches = parquet.iter_batches(batch_size=plan.batch_rows, row_groups=[plan.index], use_threads=False)
        try:
            for batch in batches:
                self._batch(batch)
        except (pa.ArrowException, OSError, UnicodeDecodeError) as exc:  # a corrupt page past its header
            self.rows.rows += 1
            self.rows.problem(self._row_no + 1, "invalid_parquet", f"cannot be read ({_short(exc)})")
            return False
        return True

    def _batch(self, batch: Any) -> None:
        """Rows become Python objects a slice at a time, each slice's text within the budget; a row whose text
        alone passes the row limit never does (its JSON could only be longer)."""
        start, held = 0, 0
        for i, size in enumerate(_text_bytes(batch)):
            if size > self.max_row_bytes or held + size > BATCH_BUDGET:
                self._convert(batch.slice(start, i - start))
                start, held = i, 0
            if size > self.max_row_bytes:
                self._row_no += 1
                self.rows.rows += 1
                self.rows.problem(self._row_no, "line_too_long", self.too_long_message("its JSON is "))
                start = i + 1
            else:
                held += size
        self._convert(batch.slice(start))

    def _convert(self, batch: Any) -> None:
        for row in batch.to_pylist():
            self._row_no += 1
            self._row(self._row_no, parquet_row(row))

    def _row(self, row_no: int, row: dict[str, Any]) -> None:
        self.rows.rows += 1
        line = json.dumps(row, ensure_ascii=False).encode()
        if len(line) > self.max_row_bytes:  # before the row checks: the worker reads this line
            return self.rows.problem(row_no, "line_too_long", self.too_long_message("its JSON is "))
        line += b"\n"
        problems = self.rows.problem_count
        self.rows.check(row_no, row)
        if self.rows.problem_count != problems:
            return
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


def _is_text(kind: Any) -> bool:
    import pyarrow as pa

    return bool(
        pa.types.is_string(kind)
        or pa.types.is_binary(kind)
        or pa.types.is_large_string(kind)
        or pa.types.is_large_binary(kind)
    )


def _text_bytes(batch: Any) -> list[int]:
    """Per row: the bytes of its text and binary columns (read as dictionaries: measured without decoding)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    total = pa.array([0] * batch.num_rows, pa.int64())
    for column in batch.columns:
        if pa.types.is_dictionary(column.type):
            if not _is_text(column.type.value_type):
                continue
            lengths = pc.take(pc.binary_length(column.dictionary).cast(pa.int64()), column.indices)
        elif _is_text(column.type):
            lengths = pc.binary_length(column).cast(pa.int64())
        else:
            continue
        total = pc.add(total, pc.fill_null(lengths, 0))
    return list(total.to_pylist())


def _short(exc: BaseException, limit: int = 200) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
