"""Streaming multipart/form-data reader for uploads: the file part is handed on chunk by chunk.

Starlette's form parser spools a whole upload to a temporary file before a route runs; this reads the
request stream directly, so an upload is validated, hashed and stored as it arrives and an oversized
one is refused as soon as it crosses the limit.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, MultipartState, parse_options_header
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request

from ftjobs.service.errors import InvalidRequest, MalformedBody, UnsupportedMediaType

MAX_FIELD_BYTES = 1024  # the non-file form fields are short strings (`purpose`)
BATCH_BYTES = 256 * 1024  # file bytes handed to the consumer (in a worker thread) at a time


@dataclass
class _Parts:
    """python-multipart callbacks: collect part headers, route file bytes to `pending`."""

    file_field: str
    on_file: Callable[[str, str], None] | None = None  # (filename, content type) once the file part begins
    filename: str | None = None
    fields: dict[str, bytearray] = field(default_factory=dict)
    pending: list[bytes] = field(default_factory=list)
    pending_bytes: int = 0
    _current: str = ""
    _header: bytes = b""
    _value: bytes = b""
    _disposition: bytes = b""
    _content_type: bytes = b""

    def on_part_begin(self) -> None:
        self._current, self._disposition, self._content_type = "", b"", b""

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def on_header_end(self) -> None:
        if self._header.lower() == b"content-disposition":
            self._disposition = self._value
        elif self._header.lower() == b"content-type":
            self._content_type = self._value
        self._header, self._value = b"", b""

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        self._current = options.get(b"name", b"").decode("utf-8", "replace")
        if self._current != self.file_field and b"filename" in options:  # a file in a field of another name
            raise InvalidRequest(
                f"Send the dataset in the multipart field {self.file_field!r}, not {self._current!r}.",
                param=self.file_field,
            )
        if self._current == self.file_field:
            if self.filename is not None:
                raise InvalidRequest("Send one file per upload.", param=self.file_field)
            raw = options.get(b"filename", b"").decode("utf-8", "replace")
            self.filename = os.path.basename(raw.replace("\\", "/"))[:255] or "upload.jsonl"
            if self.on_file is not None:
                self.on_file(self.filename, self._content_type.decode("latin-1"))

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._current == self.file_field:
            self.pending.append(data[start:end])
            self.pending_bytes += end - start
            return
        buf = self.fields.setdefault(self._current, bytearray())
        if len(buf) + end - start > MAX_FIELD_BYTES:
            raise InvalidRequest(
                f"Form field {self._current!r} is too long (at most {MAX_FIELD_BYTES} bytes); "
                f"send the dataset in the multipart field {self.file_field!r}.",
                param=self.file_field,
            )
        buf += data[start:end]

    def take(self) -> bytes:
        chunk = b"".join(self.pending)
        self.pending.clear()
        self.pending_bytes = 0
        return chunk


@dataclass
class Upload:
    filename: str
    fields: dict[str, str]


async def read_upload(
    request: Request,
    file_field: str,
    consume: Callable[[bytes], None],
    on_file: Callable[[str, str], None] | None = None,
) -> Upload:
    """Parse a multipart body, calling `consume(bytes)` (in a worker thread) with the file's data in order.

    `on_file(filename, content_type)` is called when the file part's headers are read, before its data.
    """
    content_type, options = parse_options_header(request.headers.get("content-type", ""))
    if content_type != b"multipart/form-data" or b"boundary" not in options:
        raise UnsupportedMediaType(
            f"Send multipart/form-data with the dataset in a field named {file_field!r}."
        )
    parts = _Parts(file_field, on_file)
    parser = MultipartParser(
        options[b"boundary"],
        {
            "on_part_begin": parts.on_part_begin,
            "on_header_field": parts.on_header_field,
            "on_header_value": parts.on_header_value,
            "on_header_end": parts.on_header_end,
            "on_headers_finished": parts.on_headers_finished,
            "on_part_data": parts.on_part_data,
        },
    )
    try:
        async for chunk in request.stream():
            parser.write(chunk)
            if parts.pending_bytes >= BATCH_BYTES:
                await run_in_threadpool(consume, parts.take())
        parser.finalize()
    except FormParserError as exc:
        raise MalformedBody(f"The multipart body cannot be parsed: {exc}") from None
    except ClientDisconnect:
        raise MalformedBody("The upload was interrupted.", param=file_field) from None
    if parser.state != MultipartState.END:
        # finalize() does not check this: a body cut short (a client or proxy that gave up) would
        # otherwise be stored as a shorter, valid-looking file. Bytes after the closing boundary
        # (an epilogue, RFC 2046) are ignored by the parser and accepted.
        raise MalformedBody(
            "The multipart body ended before its closing boundary: the upload is incomplete.", param=file_field
        )
    if parts.pending_bytes:
        await run_in_threadpool(consume, parts.take())
    if parts.filename is None:
        raise InvalidRequest(
            f"Missing the multipart field {file_field!r} (the JSONL file).", param=file_field
        )
    fields = {k: v.decode("utf-8", "replace") for k, v in parts.fields.items()}
    return Upload(filename=parts.filename, fields=fields)
