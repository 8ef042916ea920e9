"""Dataset uploads: streamed, validated line by line, stored atomically."""

from __future__ import annotations

import hashlib
import json
import os
import time
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from ftjobs.client.models import FILE_ID_PATTERN, FileDeleted, FileList, FileObject, FileProfile
from ftjobs.core.keys import file_lines_path, file_path, file_profile_path
from ftjobs.core.records import new_id
from ftjobs.core.settings import Settings
from ftjobs.core.telemetry import count_upload
from ftjobs.service.deps import LimitsDep, ReadsDep, SettingsDep, StorageDep, StoreDep, TenantDep
from ftjobs.service.errors import (
    FileNotFound,
    FileTooLarge,
    InvalidFile,
    InvalidRequest,
    MalformedBody,
    QuotaExceeded,
    RateLimited,
    ResourceInUse,
    UnsupportedFormat,
    UnsupportedMediaType,
    ValidationError,
    error_responses,
)
from ftjobs.service.file_profiles import load_profile, save_profile
from ftjobs.service.limits import check_upload
from ftjobs.service.openai_results import delete_file as remove_file
from ftjobs.service.parquet import ParquetReader, is_parquet
from ftjobs.service.readers import CsvReader, JsonlReader, Reader, Sink, is_csv
from ftjobs.service.reads import FILES, checked, page_json
from ftjobs.service.upload import read_upload

router = APIRouter(prefix="/v1/files", tags=["files"])

MULTIPART_OVERHEAD_BYTES = 64 * 1024  # headers and boundaries around the file part
PURPOSES = ("fine-tune",)
UPLOAD_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["file"],
                "properties": {
                    "file": {
                        "type": "string",
                        "format": "binary",
                        "description": "JSONL, CSV with a header row, or Parquet (`.parquet` or its `PAR1` magic).",
                    },
                    "purpose": {"type": "string", "enum": list(PURPOSES), "default": "fine-tune"},
                },
            },
            "example": {  # two prompt_completion rows: an upload the API accepts (schemathesis' examples phase)
                "file": '{"prompt": "say red :", "completion": " red"}\n'
                '{"prompt": "say blue :", "completion": " blue"}\n',
                "purpose": "fine-tune",
            },
        }
    },
}

AfterQuery = Annotated[
    str | None, Query(pattern=FILE_ID_PATTERN, description="Cursor: the `last_id` of the previous page.")
]
LimitQuery = Annotated[int, Query(ge=1, le=100, description="Page size.")]
Sha256Query = Annotated[
    str | None,
    Query(
        pattern="^[0-9a-f]{64}$",
        description="Only files whose uploaded bytes (`source_sha256`) or stored rows (`sha256`) have this "
        "sha256 (lowercase hex): a client reuses an upload of the same file instead of sending it again.",
    ),
]
SCAN_PAGE = 100  # files read at a time while looking for a sha256


def spool_dir(settings: Settings) -> str:
    """The local folder of upload spools (Parquet); what a killed API leaves there is swept (service/main.py)."""
    return os.path.join(settings.data_dir, "tmp")


def open_reader(filename: str, content_type: str, head: bytes, settings: Settings, sink: Sink) -> Reader:
    """The reader for an upload, from its name, Content-Type and first bytes; all of them store JSONL."""
    cap = settings.max_row_bytes
    if is_parquet(filename, content_type, head):
        return ParquetReader(settings.max_upload_bytes, sink, tmp_dir=spool_dir(settings), max_row_bytes=cap)
    if is_csv(filename, content_type):
        return CsvReader(settings.max_upload_bytes, sink, max_row_bytes=cap)
    return JsonlReader(settings.max_upload_bytes, sink, max_row_bytes=cap)


@router.post(
    "",
    status_code=201,
    openapi_extra={"requestBody": UPLOAD_BODY},
    responses=error_responses(
        *(MalformedBody, FileTooLarge, UnsupportedMediaType, UnsupportedFormat, InvalidFile, InvalidRequest),
        *(QuotaExceeded, RateLimited),  # the route's own 429s replace the app's: declare both
    ),
)
async def upload_file(
    request: Request,
    tenant: TenantDep,
    settings: SettingsDep,
    store: StoreDep,
    storage: StorageDep,
    limits: LimitsDep,
) -> FileObject:
    """Upload a JSONL, CSV or Parquet dataset (multipart field `file`); validated and profiled as it is stored."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > settings.max_upload_bytes + MULTIPART_OVERHEAD_BYTES:
        raise FileTooLarge(
            f"The file exceeds the upload limit of {settings.max_upload_bytes} bytes.", param="file"
        )
    # Quotas (429) before the body: file count, Content-Length vs the bytes left today and left to store.
    usage = await run_in_threadpool(store.usage, tenant)
    check_upload(usage, limits, int(declared) if declared.isdigit() else None, MULTIPART_OVERHEAD_BYTES)
    file_id = new_id("file-")
    path = file_path(tenant, file_id)
    writer = await run_in_threadpool(storage.writer, path)
    parts: list[tuple[str, str]] = []  # (filename, Content-Type) of the file part
    readers: list[Reader] = []

    def reader_for(head: bytes = b"") -> Reader:
        # Picked at the file's first bytes (Parquet has a magic number); CSV and Parquet are converted
        # to JSONL as they are read: the worker reads JSONL only.
        if not readers:
            readers.append(open_reader(*parts[-1], head, settings, writer.write))
        return readers[-1]

    uploaded = hashlib.sha256()  # of the bytes as sent (`source_sha256`): what a client can hash locally

    def consume(data: bytes) -> None:
        uploaded.update(data)
        reader_for(data).feed(data)

    try:
        upload = await read_upload(request, "file", consume, lambda name, ctype: parts.append((name, ctype)))
        purpose = upload.fields.get("purpose") or "fine-tune"
        if purpose not in PURPOSES:
            raise InvalidRequest(
                f"purpose must be one of {', '.join(PURPOSES)}, got {purpose!r}.", param="purpose"
            )
        reader = await run_in_threadpool(reader_for)  # an empty file part still needs its reader
        summary = await run_in_threadpool(reader.finish, upload.filename)  # Parquet: the whole conversion
        try:
            await run_in_threadpool(writer.commit)
        except FileNotFoundError:  # the temp sweep took a partial file that nothing wrote to for too long
            raise MalformedBody(
                "The upload stalled for longer than the server keeps a partial upload; send it again.", param="file"
            ) from None
    finally:
        for opened in readers:
            await run_in_threadpool(opened.close)
        await run_in_threadpool(writer.abort)  # no-op after a commit
    file = FileObject(
        id=file_id,
        tenant=tenant,
        filename=upload.filename,
        bytes=summary.bytes,
        rows=summary.rows,
        format=summary.format,
        sha256=summary.sha256,
        source_sha256=uploaded.hexdigest(),
        created_at=int(time.time()),
        warnings=[w.message for w in summary.warnings],
        warning_details=summary.warnings,
        source_format=reader.source_format,
    )
    try:
        await run_in_threadpool(save_profile, storage, file, reader.rows.profile.build(file_id))
        if (line_map := reader.line_map()) is not None:  # the worker's errors cite the user's lines
            data = json.dumps(line_map, separators=(",", ":")).encode()
            await run_in_threadpool(storage.write_bytes, file_lines_path(tenant, file_id), data)
        await run_in_threadpool(store.add_file, file, limits)  # counts the bytes stored; 429 past a quota
    except BaseException:
        await run_in_threadpool(storage.delete, path)  # no record, no orphaned dataset
        await run_in_threadpool(storage.delete, file_profile_path(tenant, file_id))
        await run_in_threadpool(storage.delete, file_lines_path(tenant, file_id))
        raise
    await run_in_threadpool(count_upload, request.app.state.redis, file.bytes)  # /metrics: ftjobs_upload_bytes
    return file


# The polled reads are async over redis.asyncio (service/reads.py): no thread hop; the records are checked and
# written out by pydantic in one call per page (`response_model` keeps the spec).
@router.get("/{file_id}", response_model=FileObject, responses=error_responses(FileNotFound, ValidationError))
async def get_file(file_id: str, tenant: TenantDep, reads: ReadsDep) -> Response:
    """Get an uploaded file's metadata."""
    raw = await reads.file_json(tenant, file_id)
    if raw is None:
        raise FileNotFound(f"No file {file_id!r}.")
    return Response(FileObject.model_validate_json(raw).model_dump_json(), media_type="application/json")


@router.get("", response_model=FileList, responses=error_responses(ValidationError))
async def list_files(
    tenant: TenantDep, reads: ReadsDep, after: AfterQuery = None, limit: LimitQuery = 20, sha256: Sha256Query = None
) -> Response:
    """List uploaded files, newest first (cursor pagination with `after`); `sha256` keeps only copies of one file."""
    if sha256 is None:
        raws, has_more, last_id = await reads.files(tenant, after, limit)
        return Response(page_json(checked(FILES, raws), has_more, last_id), media_type="application/json")
    found: list[FileObject] = []
    cursor = after
    while len(found) <= limit:  # the tenant's files, a page at a time, until one match past the page
        raws, more, cursor = await reads.files(tenant, cursor, SCAN_PAGE)
        scanned = FILES.validate_json(b"[" + b",".join(raws) + b"]")
        found += [f for f in scanned if sha256 in (f.source_sha256, f.sha256)]
        if not more:
            break
    data = found[:limit]
    page = FileList(data=data, has_more=len(found) > limit, last_id=data[-1].id if data else None)
    return Response(page.model_dump_json(), media_type="application/json")


@router.get("/{file_id}/profile", responses=error_responses(FileNotFound, ValidationError))
def get_file_profile(file_id: str, tenant: TenantDep, store: StoreDep, storage: StorageDep) -> FileProfile:
    """Get a dataset's profile: rows, columns, label distribution, length statistics, duplicates."""
    return load_profile(storage, store.get_file(tenant, file_id))


CONTENT_TYPES = ("application/jsonl", "text/csv")  # an upload's rows, a result file
CONTENT = {
    "description": "The file as stored: JSONL rows (CSV and Parquet uploads converted), or a job's metrics CSV.",
    "content": {media: {"schema": {"type": "string", "format": "binary"}} for media in CONTENT_TYPES},
}


@router.get(
    "/{file_id}/content",
    response_class=StreamingResponse,
    responses={200: CONTENT, **error_responses(FileNotFound, ValidationError)},
)
def get_file_content(file_id: str, tenant: TenantDep, store: StoreDep, storage: StorageDep) -> StreamingResponse:
    """Download a file's content (OpenAI's `files.content`): an upload's JSONL rows, or a result file's CSV."""
    file = store.get_file(tenant, file_id)
    path = file_path(tenant, file_id)
    try:
        size, handle = storage.size(path), storage.open(path)
    except FileNotFoundError:
        raise FileNotFound(f"File {file_id} is missing from the store.") from None
    media = "text/csv" if file.purpose == "fine-tune-results" else "application/jsonl"
    return StreamingResponse(storage.iter_bytes(handle), media_type=media, headers={"Content-Length": str(size)})


@router.delete("/{file_id}", responses=error_responses(FileNotFound, ResourceInUse, ValidationError))
def delete_file(file_id: str, tenant: TenantDep, store: StoreDep, storage: StorageDep) -> FileDeleted:
    """Delete a file (not while an unfinished job uses it); its bytes count no more towards the tenant's quotas."""
    remove_file(store, storage, tenant, file_id)
    return FileDeleted(id=file_id)
