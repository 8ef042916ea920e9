"""Streaming readers of uploads (JSONL, or CSV converted to JSONL): line by line, bounded memory.

Feed raw bytes as they arrive to a `JsonlReader` or `CsvReader` (`service/parquet.py` adds Parquet);
at most one line (one CSV record) is held in memory: a line passing the row limit (FTJOBS_MAX_ROW_BYTES) is
a `line_too_long` problem the moment it passes it, and the rest of it is skipped, never buffered. Every row
goes to a `RowValidator` (`service/validation.py`). `finish()` returns the summary or raises InvalidFile
(with structured `details`) / FileTooLarge. A converted upload also leaves a `line_map()`: where each stored
JSONL row came from, so the worker's errors cite it too.
"""

from __future__ import annotations

import csv
import hashlib
import json
from array import array
from collections.abc import Callable
from typing import Any, ClassVar

import orjson

from ftjobs.client.models import SourceFormat
from ftjobs.service.errors import FileTooLarge
from ftjobs.service.validation import RowValidator, UploadSummary

DEFAULT_MAX_ROW_BYTES = 1024 * 1024  # Settings.max_row_bytes
CSV_COLUMNS = ("text", "label", "prompt", "completion", "source", "target", "chosen", "rejected")
# JSONL lines parsed and checked at a time: each C loop over them holds the GIL (the event loop waits for it) for
# ~0.1 ms, less than the switch interval the API sets (service/main.py), at no measurable cost per row.
BATCH_LINES = 256
MAX_LINE_BREAKS = 100_000  # CSV rows whose line is mapped exactly (blank lines and multi-line cells shift it)

Sink = Callable[[bytes], None]


class Reader:
    """Byte counting, the size limit and the line splitting shared by the JSONL and CSV readers."""

    source_format: ClassVar[SourceFormat] = "jsonl"  # what was uploaded (FileObject.source_format)
    unit: ClassVar[str] = "line"  # what a problem's number counts

    def __init__(self, max_bytes: int, sink: Sink | None = None, max_row_bytes: int = DEFAULT_MAX_ROW_BYTES) -> None:
        self.max_bytes = max_bytes
        self.max_row_bytes = max_row_bytes
        self.bytes = 0  # as uploaded
        self.stored_bytes = 0
        self.line_no = 0
        self.rows = RowValidator(self.unit)
        self._sink = sink
        self._sha = hashlib.sha256()  # of what is stored
        self._line = bytearray()
        self._overlong = False

    def feed(self, data: bytes) -> None:
        self.bytes += len(data)
        if self.bytes > self.max_bytes:
            raise FileTooLarge(f"The file exceeds the upload limit of {self.max_bytes} bytes.", param="file")
        *lines, tail = data.split(b"\n")
        if lines and (self._line or self._overlong or self.line_no == 0):
            self._append(lines[0])  # a line begun in an earlier chunk, or the first (a BOM)
            self._end_line()
            del lines[0]
        if lines:
            self._lines_done(lines)
        self._append(tail)

    def _lines_done(self, lines: list[bytes]) -> None:
        """Whole lines of one chunk, the first numbered `line_no + 1`."""
        for piece in lines:
            if len(piece) > self.max_row_bytes:
                self._append(piece)
                self._end_line()
            else:  # the common case, without copying the line: as _append + _end_line would do it
                self.line_no += 1
                self._line_done(piece)

    def finish(self, filename: str) -> UploadSummary:
        if self._line or self._overlong:  # last line without a trailing newline
            self._end_line()
        self._flush()
        fmt = self.rows.finish(filename)
        return UploadSummary(self.rows.rows, self.stored_bytes, self._sha.hexdigest(), fmt, self.rows.warnings())

    def store(self, data: bytes) -> None:
        self.stored_bytes += len(data)
        self._sha.update(data)
        if self._sink is not None:
            self._sink(data)

    def line_map(self) -> dict[str, Any] | None:
        """For a converted upload: what `jobs/data/read.py` needs to cite the user's line of a stored row."""
        return None

    def close(self) -> None:
        """Release what the reader holds (a temporary file); safe to call more than once."""

    def _append(self, piece: bytes) -> None:
        if self._overlong or not piece:
            return
        if len(self._line) + len(piece) > self.max_row_bytes:  # refused now; the rest of the line is skipped
            self._overlong = True
            self._line.clear()
            self._too_long(self.line_no + 1)
        else:
            self._line += piece

    def _too_long(self, line_no: int) -> None:
        self.rows.rows += 1
        self.rows.problem(line_no, "line_too_long", self.too_long_message())

    def too_long_message(self, subject: str = "") -> str:
        return f"{subject}longer than the row limit of {self.max_row_bytes} bytes (FTJOBS_MAX_ROW_BYTES)"

    def _end_line(self) -> None:
        self.line_no += 1
        if self._overlong:
            self._line_skipped()
        else:
            line = bytes(self._line)
            if self.line_no == 1:
                line = line.removeprefix(b"\xef\xbb\xbf")  # a UTF-8 byte order mark
            self._line_done(line)
        self._line.clear()
        self._overlong = False

    def _line_done(self, line: bytes) -> None:
        raise NotImplementedError

    def _line_skipped(self) -> None:
        """A line over the row limit ended (its problem is already counted)."""

    def _flush(self) -> None:
        """Anything held back until the end of the stream."""


class JsonlReader(Reader):
    """JSONL: every line is stored exactly as uploaded."""

    def feed(self, data: bytes) -> None:
        super().feed(data)
        self.store(data)

    def _lines_done(self, lines: list[bytes]) -> None:
        """A chunk's lines parsed in one C loop and checked by column (`RowValidator.check_rows`) when each is one
        JSON document within the row limit, as they are in a valid file; otherwise line by line."""
        if max(map(len, lines)) > self.max_row_bytes:
            return super()._lines_done(lines)
        for start in range(0, len(lines), BATCH_LINES):
            batch = lines[start : start + BATCH_LINES] if len(lines) > BATCH_LINES else lines
            try:
                rows = list(map(orjson.loads, batch))  # a blank line too is refused here, and skipped below
            except orjson.JSONDecodeError:
                super()._lines_done(batch)
                continue
            first, self.line_no = self.line_no + 1, self.line_no + len(batch)
            self.rows.rows += len(rows)
            self.rows.check_rows(first, rows)

    def _line_done(self, line: bytes) -> None:
        if not line.strip():
            return
        self.rows.rows += 1
        try:
            row = orjson.loads(line)  # ~3x json.loads; what it refuses, json decides (and words the problem)
        except orjson.JSONDecodeError:
            try:
                row = json.loads(line.decode("utf-8"))  # NaN, lone surrogates: accepted as before
            except UnicodeDecodeError:
                return self.rows.problem(self.line_no, "invalid_utf8", "not valid UTF-8")
            except json.JSONDecodeError as exc:
                return self.rows.problem(self.line_no, "invalid_json", f"invalid JSON ({exc.msg})")
        self.rows.check(self.line_no, row)


class CsvReader(Reader):
    """CSV with a header row; known columns (text, label, prompt, completion, source, target, chosen, rejected)
    become JSONL rows.

    A quoted cell may span lines: a record ends at a line break outside quotes. Problems are numbered
    with the CSV line the record starts on; `line_map()` keeps that line for every stored row.
    """

    source_format = "csv"

    def __init__(self, max_bytes: int, sink: Sink | None = None, max_row_bytes: int = DEFAULT_MAX_ROW_BYTES) -> None:
        super().__init__(max_bytes, sink, max_row_bytes)
        # A record is held to the row limit below, so a cell may be as long (the csv module's default is 128 KiB).
        csv.field_size_limit(max(csv.field_size_limit(), max_row_bytes))
        self.header: list[str] | None = None
        self._record: list[str] = []
        self._record_line = 0
        self._record_bytes = 0
        self._quotes = 0
        # Stored row n comes from CSV line n + offset; the offset changes at a multi-line cell or a blank
        # line, and each change is kept as (row, line): one pair for a plain file, bounded by MAX_LINE_BREAKS.
        self._stored_rows = 0
        self._offset: int | None = None
        self._breaks = array("q")  # flat (row, line) pairs
        self._mapped_rows: int | None = None  # rows mapped exactly, once MAX_LINE_BREAKS is reached

    def _line_done(self, line: bytes) -> None:
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            self.rows.rows += 1
            return self.rows.problem(self.line_no, "invalid_utf8", "not valid UTF-8")
        if not self._record:
            if not text.strip():
                return
            self._record_line = self.line_no
        self._record.append(text.removesuffix("\r"))
        self._record_bytes += len(line)
        self._quotes += text.count('"')
        if self._record_bytes > self.max_row_bytes:  # an unterminated quote must not buffer the rest of the file
            self.rows.rows += 1
            self.rows.problem(self._record_line, "line_too_long", self.too_long_message("a record "))
            self._record, self._quotes, self._record_bytes = [], 0, 0
            return
        if self._quotes % 2 == 0:  # outside quotes: the record is complete ("" escapes keep the parity)
            self._record_done()

    def _too_long(self, line_no: int) -> None:
        """Numbered by the line its record starts on; the rest of a multi-line record goes with it."""
        self.rows.rows += 1
        line_no = self._record_line if self._record else line_no
        self.rows.problem(line_no, "line_too_long", self.too_long_message("a record "))

    def _line_skipped(self) -> None:
        self._record, self._quotes, self._record_bytes = [], 0, 0

    def _flush(self) -> None:
        if self._record:
            self.rows.rows += 1
            self.rows.problem(self._record_line, "invalid_csv", "unterminated quoted cell")
            self._record = []

    def _record_done(self) -> None:
        record, line = "\n".join(self._record), self._record_line
        self._record, self._quotes, self._record_bytes = [], 0, 0
        try:
            cells = next(csv.reader([record]))
        except csv.Error as exc:
            self.rows.rows += 1
            return self.rows.problem(line, "invalid_csv", f"invalid CSV ({exc})")
        if self.header is None:
            self.header = [c.strip().lower() for c in cells]
            if not any(c in CSV_COLUMNS for c in self.header):
                self.rows.problem(line, "unknown_shape", f"the header names none of {', '.join(CSV_COLUMNS)}")
            return
        self.rows.rows += 1
        if len(cells) != len(self.header):
            return self.rows.problem(
                line, "invalid_csv", f"{len(cells)} cells, the header has {len(self.header)} columns"
            )
        row = {name: value for name, value in zip(self.header, cells, strict=True) if name in CSV_COLUMNS}
        problems = self.rows.problem_count
        self.rows.check(line, row)
        if self.rows.problem_count != problems:
            return
        stored = json.dumps(row, ensure_ascii=False).encode()
        if len(stored) > self.max_row_bytes:  # JSON escapes can lengthen a record: the worker reads this line
            return self.rows.problem(line, "line_too_long", self.too_long_message("its JSON is "))
        self.store(stored + b"\n")
        self._map(line)

    def _map(self, line: int) -> None:
        self._stored_rows += 1
        offset = line - self._stored_rows
        if offset == self._offset or self._mapped_rows is not None:
            return
        if len(self._breaks) >= 2 * MAX_LINE_BREAKS:
            self._mapped_rows = self._stored_rows - 1
            return
        self._breaks.extend((self._stored_rows, line))
        self._offset = offset

    def line_map(self) -> dict[str, Any]:
        """`lines`: [[row, CSV line], ...] where the offset changes; rows past `mapped_rows` cite their index."""
        pairs = self._breaks.tolist()
        out: dict[str, Any] = {"source_format": "csv", "lines": [pairs[i : i + 2] for i in range(0, len(pairs), 2)]}
        if self._mapped_rows is not None:
            out["mapped_rows"] = self._mapped_rows
        return out


def media_type(content_type: str | None) -> str:
    return (content_type or "").split(";")[0].strip().lower()


def is_csv(filename: str, content_type: str | None = None) -> bool:
    return filename.lower().endswith(".csv") or media_type(content_type) == "text/csv"
