"""A Parquet upload's sizes, from its footer and page headers alone: checked before anything is decompressed.

The footer says where each column chunk lies; every page in a chunk starts with a small Thrift header (compact
protocol) giving the page's decompressed size, its value count and its encoding. Reading those headers, not
the pages, tells per column chunk how large a page decompresses, how large one value can be (a dictionary
entry can be repeated by every row, a DELTA_BYTE_ARRAY value can repeat its predecessor) and how large the
decoded column can grow. `check_sizes` refuses a file that cannot fit the limits (a page over `max_page`:
413; values averaging over the row limit: 422 naming the rows, row group and column) and returns, per row
group, how many rows a batch may hold so that its decoded values stay within BATCH_BUDGET bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import IO, Any

from ftjobs.client.models import FileProblem
from ftjobs.service.errors import FileTooLarge, InvalidFile

BATCH_BUDGET = 16 * 1024 * 1024  # decoded bytes of one record batch, at most (what the API holds while reading)
MAX_BATCH_ROWS = 256
PAGE_FLOOR = 16 * 1024 * 1024  # a page may always decompress to this (writers aim at 1 MiB pages)
MAX_HEADER_BYTES = 1024 * 1024  # one page header (statistics included)
MAX_DEPTH = 8  # nested Thrift structs in a page header (real ones nest 2 deep)
LENGTH_PREFIX = 4  # bytes before each plain BYTE_ARRAY value
DATA_PAGE, DICTIONARY_PAGE, DATA_PAGE_V2 = 0, 2, 3
DICTIONARY_INDICES = frozenset({2, 8})  # PLAIN_DICTIONARY, RLE_DICTIONARY: the values are in the dictionary
DELTA_BYTE_ARRAY = 7  # each value repeats a prefix of the one before


class PageHeaderError(ValueError):
    """A page header that cannot be read (a corrupt or truncated file)."""


def max_page_bytes(max_row_bytes: int) -> int:
    """The largest decompressed page accepted: a page must hold one row's value, and PAGE_FLOOR always."""
    return max(PAGE_FLOOR, 2 * max_row_bytes)


Spec = dict[int, Any]  # field id -> None (an integer, bool or bytes), a Spec (a struct), [element spec] (a list)
PAGE_HEADER: Spec = {1: None, 2: None, 3: None, 5: {1: None, 2: None}, 7: {1: None}, 8: dict.fromkeys(range(1, 7))}
# FileMetaData.row_groups[].{columns[].{file_path, meta_data.{path_in_schema, total_compressed_size,
# data_page_offset, dictionary_page_offset}}, total_byte_size, num_rows}
FOOTER: Spec = {4: [{1: [{1: None, 3: {3: [None], 7: None, 9: None, 11: None}}], 2: None, 3: None}]}


class _Compact:
    """Just enough of Thrift's compact protocol to read the fields a Spec names and skip everything else."""

    def __init__(self, fh: IO[bytes], limit: int = MAX_HEADER_BYTES, what: str = "a page header") -> None:
        self.fh = fh
        self.read = 0
        self.limit = limit
        self.what = what

    def _bytes(self, n: int) -> bytes:
        self.read += n
        if self.read > self.limit:
            raise PageHeaderError(f"{self.what} longer than {self.limit} bytes")
        data = self.fh.read(n)
        if len(data) != n:
            raise PageHeaderError(f"{self.what} is cut short")
        return data

    def _varint(self) -> int:
        result = shift = 0
        while shift < 64:
            byte = self._bytes(1)[0]
            result |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return result
            shift += 7
        raise PageHeaderError(f"a malformed integer in {self.what}")

    def _zigzag(self) -> int:
        n = self._varint()
        return (n >> 1) ^ -(n & 1)

    def _value(self, kind: int, spec: Any, depth: int, in_container: bool = False) -> Any:
        """Read one value of Thrift type `kind`; what `spec` does not ask for is skipped (None)."""
        if depth > MAX_DEPTH:
            raise PageHeaderError(f"{self.what} nested too deep")
        if kind in (1, 2):  # booleans: in the field header, or one byte inside a list
            return self._bytes(1)[0] == 1 if in_container else kind == 1
        if kind == 3:
            return self._bytes(1)[0]
        if kind in (4, 5, 6):
            return self._zigzag()
        if kind == 7:
            self._bytes(8)
            return None
        if kind == 8:
            data = self._bytes(self._varint())
            return data if spec is None else None
        if kind in (9, 10):
            head = self._bytes(1)[0]
            size = head >> 4 if head >> 4 != 15 else self._varint()
            element = spec[0] if isinstance(spec, list) else {}
            items = [self._value(head & 0x0F, element, depth + 1, in_container=True) for _ in range(size)]
            return items if isinstance(spec, list) else None
        if kind == 11:
            if size := self._varint():
                types = self._bytes(1)[0]
                for _ in range(size):
                    self._value(types >> 4, {}, depth + 1, in_container=True)
                    self._value(types & 0x0F, {}, depth + 1, in_container=True)
            return None
        if kind == 12:
            return self.struct(spec if isinstance(spec, dict) else {}, depth + 1)
        raise PageHeaderError(f"an unknown Thrift type {kind} in {self.what}")

    def struct(self, spec: Spec, depth: int = 0) -> dict[int, Any]:
        """{field id: value} of the fields `spec` names."""
        fields: dict[int, Any] = {}
        last = 0
        while (head := self._bytes(1)[0]) != 0:
            kind, delta = head & 0x0F, head >> 4
            last = last + delta if delta else self._zigzag()
            value = self._value(kind, spec.get(last, {}), depth)
            if last in spec:
                fields[last] = value
        return fields


@dataclass
class Page:
    kind: int  # DATA_PAGE, DICTIONARY_PAGE, DATA_PAGE_V2 (an index page is skipped)
    size: int  # decompressed bytes
    values: int  # values, nulls included (a dictionary page: its entries)
    nulls: int = 0  # known for v2 pages only
    levels: int = 0  # bytes of repetition/definition levels (v2 only)
    rows: int | None = None  # v2 only
    encoding: int = 0


def read_pages(fh: IO[bytes], start: int, length: int) -> list[Page]:
    """The page headers of the column chunk at `start` (`length` bytes, headers included)."""
    pages, pos, end = [], start, start + length
    while pos < end:
        fh.seek(pos)
        thrift = _Compact(fh)
        header = thrift.struct(PAGE_HEADER)
        kind, size, stored = _int(header, 1, None), _int(header, 2, None), _int(header, 3, None)
        pos += thrift.read + stored
        if kind == DICTIONARY_PAGE:
            pages.append(Page(kind, size, _int(_struct(header, 7), 1)))
        elif kind == DATA_PAGE:
            body = _struct(header, 5)
            pages.append(Page(kind, size, _int(body, 1), encoding=_int(body, 2)))
        elif kind == DATA_PAGE_V2:
            body = _struct(header, 8)
            levels = _int(body, 5) + _int(body, 6)
            pages.append(Page(kind, size, _int(body, 1), _int(body, 2), levels, _int(body, 3), _int(body, 4)))
    return pages


def _struct(fields: dict[int, Any], key: int) -> dict[int, Any]:
    value = fields.get(key, {})
    if not isinstance(value, dict):
        raise PageHeaderError(f"a page header whose field {key} is not a struct")
    return value


def _int(fields: dict[int, Any], key: int, default: int | None = 0) -> int:
    """A non-negative integer field (`default` when absent; None: required)."""
    value = fields.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise PageHeaderError(f"a page header whose field {key} is {value!r}, not a count")
    return value


@dataclass
class RowGroupPlan:
    """How to read one row group: its first row (1-based) and rows per batch."""

    index: int
    first_row: int
    rows: int
    batch_rows: int
    dictionary: frozenset[str] = frozenset()  # the columns read as dictionary arrays in this row group


@dataclass
class ColumnChunk:
    path: str  # dotted, as pyarrow names a column (`messages.list.element.content`)
    start: int  # the first page's header (the dictionary page's, when there is one)
    length: int  # compressed bytes, headers included


@dataclass
class RowGroup:
    rows: int
    size: int  # decompressed bytes of its pages (a dictionary once, however often rows repeat its values)
    columns: list[ColumnChunk]


def read_footer(fh: IO[bytes], file_size: int, footer_size: int) -> list[RowGroup]:
    """The row groups and their column chunks, read from the footer here: pyarrow aborts the whole process on
    some corrupt column metadata when Python asks for it (RowGroupMetaData.column)."""
    fh.seek(file_size - 8 - footer_size)
    meta = _Compact(fh, footer_size, "the footer").struct(FOOTER)
    groups = []
    for group in _list(meta, 4):
        columns = []
        for chunk in _list(group, 1):
            if 1 in chunk:
                raise PageHeaderError("a column chunk stored in another file")
            column = _struct(chunk, 3)
            path = ".".join(p.decode("utf-8", "replace") for p in _list(column, 3) if isinstance(p, bytes))
            data, dictionary = _int(column, 9, None), _int(column, 11)
            start = dictionary if 0 < dictionary < data else data  # 0: no dictionary (some writers)
            columns.append(ColumnChunk(path, start, _int(column, 7, None)))
        groups.append(RowGroup(_int(group, 3, None), _int(group, 2), columns))
    return groups


def _list(fields: dict[int, Any], key: int) -> list[Any]:
    value = fields.get(key, [])
    if not isinstance(value, list):
        raise PageHeaderError(f"a field {key} that is not a list")
    return value


def check_sizes(
    fh: IO[bytes],
    groups: list[RowGroup],
    nested: frozenset[str],
    filename: str,
    max_row_bytes: int,
    as_dictionary: frozenset[str] = frozenset(),
) -> list[RowGroupPlan]:
    """Refuse what cannot fit the limits (from page headers, nothing decompressed); plan the batches.

    `nested`: the columns with repeated values (lists). Columns named in `as_dictionary` are read as
    dictionary arrays where a row group's chunk of them is dictionary-encoded throughout: a repeated value is
    held once per batch. A chunk that fell back to plain pages (a writer's dictionary grew too large) is read as
    plain values: pyarrow would build a dictionary of every value read so far in the row group, each batch's
    dictionary holding all earlier batches' values (memory and time growing with the row group, not the batch).
    """
    max_page = max_page_bytes(max_row_bytes)
    plans, first_row = [], 1
    for g, group in enumerate(groups):
        row_bound = slack = 0  # decoded bytes: one row can take (summed over the columns); a batch's two ends
        dictionary: set[str] = set()
        for chunk in group.columns:
            try:
                pages = read_pages(fh, chunk.start, chunk.length)
            except (PageHeaderError, OSError) as exc:
                raise InvalidFile(
                    f"{filename}: row group {g}, column {chunk.path!r}: unreadable ({exc})",
                    param="file",
                    details=[FileProblem(code="invalid_parquet", message=str(exc), field=chunk.path)],
                    total=1,
                ) from None
            if chunk.path in as_dictionary and all_dictionary(pages):
                dictionary.add(chunk.path)
            where = _Where(
                filename, g, first_row, group.rows, chunk.path, chunk.path in nested, chunk.path in dictionary,
                max_row_bytes,
            )  # fmt: skip
            per_row, ends = where.bound(pages, max_page)
            row_bound, slack = row_bound + per_row, slack + ends
        batch = min(MAX_BATCH_ROWS, max(1, (BATCH_BUDGET - slack) // max(row_bound, 1)))
        plans.append(RowGroupPlan(g, first_row, group.rows, batch, frozenset(dictionary)))
        first_row += group.rows
    return plans


def all_dictionary(pages: list[Page]) -> bool:
    """A column chunk whose data pages all index its dictionary page (no fallback to plain values)."""
    return any(p.kind == DICTIONARY_PAGE for p in pages) and all(
        p.kind == DICTIONARY_PAGE or p.encoding in DICTIONARY_INDICES for p in pages
    )


@dataclass
class _Where:
    filename: str
    group: int
    first_row: int
    rows: int
    column: str
    nested: bool
    as_dictionary: bool
    max_row_bytes: int

    def bound(self, pages: list[Page], max_page: int) -> tuple[int, int]:
        """(decoded bytes per row of a batch, bytes a batch's two ends add); raises for a page or value over
        the limits."""
        dictionary = plain_page = plain_average = delta = expanded = 0
        row = self.first_row  # of the next data page (flat columns: one value per row)
        for page in pages:
            holds_values = page.kind == DICTIONARY_PAGE or page.encoding not in DICTIONARY_INDICES
            present = page.values - page.nulls
            if holds_values and present and (page.size - page.levels - 5 * present) / present > self.max_row_bytes:
                self._too_large(row, page)
            if page.size > max_page:
                raise FileTooLarge(
                    f"{self.filename}: {self._rows(row, page)} (row group {self.group}), column {self.column!r}: a "
                    f"page decompresses to {page.size} bytes, over the limit of {max_page} bytes a page may hold",
                    param="file",
                )
            if page.kind == DICTIONARY_PAGE:
                dictionary = max(dictionary, page.size - LENGTH_PREFIX * max(page.values - 1, 0))
                continue
            if page.encoding in DICTIONARY_INDICES:
                expanded += page.values * dictionary
            elif page.encoding == DELTA_BYTE_ARRAY:
                delta = max(delta, page.size)
                expanded += page.values * page.size
            else:
                plain_page = max(plain_page, page.size)
                plain_average = max(plain_average, -(-page.size // max(page.values, 1)))
                expanded += page.size
            row += page.rows if page.rows is not None else page.values
        # Plain values are stored once each: k rows of a flat column hold at most the pages wholly inside them
        # (k times the largest page average) plus the two pages they start and end in. Dictionary entries and
        # delta-encoded values can repeat: every row can hold the largest of them, unless the column is read
        # as a dictionary array (each distinct value once: the dictionary is a batch's fixed cost).
        if self.as_dictionary and not self.nested:
            return plain_average, 2 * plain_page + dictionary + delta
        per_row = max(plain_average, dictionary, delta)
        if self.nested:  # several values per row: from the page headers, only their average is known
            per_row = max(per_row, -(-expanded // max(self.rows, 1)))
        return per_row, 2 * plain_page

    def _rows(self, row: int, page: Page) -> str:
        if self.nested or page.kind == DICTIONARY_PAGE:
            row, n = self.first_row, self.rows  # any row of the group may hold these values
        else:
            n = page.rows if page.rows is not None else page.values
        return f"row {row}" if n <= 1 else f"rows {row}-{row + n - 1}"

    def _too_large(self, row: int, page: Page) -> None:
        first = self.first_row if self.nested or page.kind == DICTIONARY_PAGE else row
        present = page.values - page.nulls
        average = max((page.size - page.levels) // max(present, 1) - LENGTH_PREFIX, 0)
        what = f"{present} values averaging {average} bytes" if present > 1 else f"a value of {average} bytes"
        if page.kind == DICTIONARY_PAGE:
            what += " in its dictionary"
        message = (
            f"{self._rows(row, page)} (row group {self.group}), column {self.column!r}: {what}, over the row "
            f"limit of {self.max_row_bytes} bytes (FTJOBS_MAX_ROW_BYTES)"
        )
        raise InvalidFile(
            f"{self.filename}: 1 problem: {message}",
            param=f"row {first}",
            details=[FileProblem(line=first, field=self.column, code="value_too_large", message=message)],
            total=1,
        )
