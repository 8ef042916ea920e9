"""Dataset uploads: streamed, validated line by line, stored atomically."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Query, Request
from starlette.concurrency import run_in_threadpool

from client.keys import file_path, file_profile_path
from client.models import FILE_ID_PATTERN, FileList, FileObject, FileProfile
from service.deps import SettingsDep, StorageDep, StoreDep, TenantDep
from service.errors import (
    FileNotFound,
    FileTooLarge,
    InvalidFile,
    InvalidRequest,
    MalformedBody,
    UnsupportedMediaType,
    ValidationError,
    error_responses,
)
from service.profile import load_profile, save_profile
from service.records import new_id
from service.upload import read_upload
from service.validation import CsvReader, JsonlReader, is_csv

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
                    "file": {"type": "string", "format": "binary", "description": "JSONL, or CSV with a header row."},
                    "purpose": {"type": "string", "enum": list(PURPOSES), "default": "fine-tune"},
                },
            }
        }
    },
}

AfterQuery = Annotated[
    str | None, Query(pattern=FILE_ID_PATTERN, description="Cursor: the `last_id` of the previous page.")
]
LimitQuery = Annotated[int, Query(ge=1, le=100, description="Page size.")]


@router.post(
    "",
    status_code=201,
    openapi_extra={"requestBody": UPLOAD_BODY},
    responses=error_responses(MalformedBody, FileTooLarge, UnsupportedMediaType, InvalidFile, InvalidRequest),
)
async def upload_file(
    request: Request, tenant: TenantDep, settings: SettingsDep, store: StoreDep, storage: StorageDep
) -> FileObject:
    """Upload a JSONL or CSV dataset (multipart field `file`); it is validated and profiled as it streams in."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > settings.max_upload_bytes + MULTIPART_OVERHEAD_BYTES:
        raise FileTooLarge(
            f"The file exceeds the upload limit of {settings.max_upload_bytes} bytes.", param="file"
        )
    file_id = new_id("file-")
    path = file_path(tenant, file_id)
    writer = await run_in_threadpool(storage.writer, path)
    readers: list[JsonlReader | CsvReader] = []

    def on_file(filename: str, content_type: str) -> None:
        # CSV (by name or Content-Type) is converted to JSONL as it streams: the worker reads JSONL only.
        reader = CsvReader if is_csv(filename, content_type) else JsonlReader
        readers.append(reader(settings.max_upload_bytes, writer.write))

    def consume(data: bytes) -> None:
        readers[-1].feed(data)

    try:
        upload = await read_upload(request, "file", consume, on_file)
        purpose = upload.fields.get("purpose") or "fine-tune"
        if purpose not in PURPOSES:
            raise InvalidRequest(
                f"purpose must be one of {', '.join(PURPOSES)}, got {purpose!r}.", param="purpose"
            )
        reader = readers[-1]
        summary = reader.finish(upload.filename)
        await run_in_threadpool(writer.commit)
    finally:
        await run_in_threadpool(writer.abort)  # no-op after a commit
    file = FileObject(
        id=file_id,
        tenant=tenant,
        filename=upload.filename,
        bytes=summary.bytes,
        rows=summary.rows,
        format=summary.format,
        sha256=summary.sha256,
        created_at=int(time.time()),
        warnings=[w.message for w in summary.warnings],
        warning_details=summary.warnings,
        source_format="csv" if isinstance(reader, CsvReader) else "jsonl",
    )
    try:
        await run_in_threadpool(save_profile, storage, file, reader.rows.profile.build(file_id))
        await run_in_threadpool(store.add_file, file)
    except BaseException:
        await run_in_threadpool(storage.delete, path)  # no record, no orphaned dataset
        await run_in_threadpool(storage.delete, file_profile_path(tenant, file_id))
        raise
    return file


@router.get("/{file_id}", responses=error_responses(FileNotFound, ValidationError))
def get_file(file_id: str, tenant: TenantDep, store: StoreDep) -> FileObject:
    """Get an uploaded file's metadata."""
    return store.get_file(tenant, file_id)


@router.get("", responses=error_responses(ValidationError))
def list_files(
    tenant: TenantDep, store: StoreDep, after: AfterQuery = None, limit: LimitQuery = 20
) -> FileList:
    """List uploaded files, newest first (cursor pagination with `after`)."""
    return store.list_files(tenant, after, limit)


@router.get("/{file_id}/profile", responses=error_responses(FileNotFound, ValidationError))
def get_file_profile(file_id: str, tenant: TenantDep, store: StoreDep, storage: StorageDep) -> FileProfile:
    """Get a dataset's profile: rows, columns, label distribution, length statistics, duplicates."""
    return load_profile(storage, store.get_file(tenant, file_id))
