"""A job's finalised artifacts: list them, stream one with its sha256."""

from __future__ import annotations

import posixpath
from urllib.parse import quote

from fastapi import APIRouter
from fastapi.responses import StreamingResponse

from ftjobs.client.models import ArtifactList
from ftjobs.core.keys import artifact_path
from ftjobs.core.storage import Storage
from ftjobs.service.deps import StorageDep, StoreDep, TenantDep
from ftjobs.service.errors import ArtifactNotFound, JobNotFound, ValidationError, error_responses

router = APIRouter(prefix="/v1/jobs/{job_id}/artifacts", tags=["artifacts"])

# The Content-Type of a download, by the artifact's extension: a fixed table, not `mimetypes` (which reads the
# host's /etc/mime.types: `.pt` came out as `application/vnd.snesdev-page-table`), so the spec can list them all.
MEDIA_TYPES = {
    ".md": "text/markdown",  # README.md: the model card
    ".txt": "text/plain",  # vocab.txt, merges.txt
    ".json": "application/json",  # metrics, manifest, configs, tokenizer, trainer state
    ".jsonl": "application/jsonl",  # eval_samples.jsonl
    ".png": "image/png",  # loss_curve.png
}
OTHER_MEDIA_TYPE = "application/octet-stream"  # weights, optimizer state, TensorBoard event files, ...
BINARY = {"type": "string", "format": "binary"}
DOWNLOAD = {
    "description": "The artifact's bytes; `X-Content-SHA256` carries its sha256. The Content-Type follows the "
    "name: "
    + ", ".join(f"`{ext}` {media}" for ext, media in MEDIA_TYPES.items())
    + f", anything else {OTHER_MEDIA_TYPE}.",
    "headers": {
        "X-Content-SHA256": {"description": "Hex sha256 of the artifact.", "schema": {"type": "string"}},
        "Content-Disposition": {
            "description": "`attachment` with the artifact's file name.",
            "schema": {"type": "string"},
        },
    },
    "content": {
        media: {"schema": {} if media == "application/json" else BINARY}  # JSON: any document
        for media in sorted({*MEDIA_TYPES.values(), OTHER_MEDIA_TYPE})
    },
}


def media_type(name: str) -> str:
    """The Content-Type an artifact is served with (text types get `; charset=utf-8` from starlette)."""
    return MEDIA_TYPES.get(posixpath.splitext(name)[1].lower(), OTHER_MEDIA_TYPE)


def content_disposition(name: str) -> str:
    """`attachment` with an ASCII fallback name and the exact UTF-8 one (RFC 6266)."""
    base = posixpath.basename(name) or "artifact"
    fallback = "".join(c if c.isascii() and c.isprintable() and c not in '"\\' else "_" for c in base)
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(base, safe='')}"


def stored_file(storage: Storage, path: str, name: str, sha256: str, missing: Exception) -> StreamingResponse:
    """A listed file of the store, streamed with its sha256, length and download name (`missing`: raised when the
    listing names a file the store no longer has)."""
    try:
        size = storage.size(path)
        handle = storage.open(path)
    except FileNotFoundError:
        raise missing from None
    headers = {
        "X-Content-SHA256": sha256,
        "Content-Length": str(size),
        "Content-Disposition": content_disposition(name),
    }
    return StreamingResponse(storage.iter_bytes(handle), media_type=media_type(name), headers=headers)


@router.get("", responses=error_responses(JobNotFound, ValidationError))
def list_artifacts(job_id: str, tenant: TenantDep, store: StoreDep) -> ArtifactList:
    """List a job's finalised artifacts (empty until the job succeeds)."""
    return ArtifactList(data=store.get_job(tenant, job_id).artifacts)


@router.get(
    "/{name:path}",
    response_class=StreamingResponse,
    responses={200: DOWNLOAD, **error_responses(JobNotFound, ArtifactNotFound, ValidationError)},
)
def download_artifact(
    job_id: str, name: str, tenant: TenantDep, store: StoreDep, storage: StorageDep
) -> StreamingResponse:
    """Download one artifact (streamed); `name` is its path as listed, e.g. `adapter/config.json`."""
    job = store.get_job(tenant, job_id)
    artifact = next((a for a in job.artifacts if a.name == name), None)
    if artifact is None:  # only listed (finalised) artifacts are served: no path ever reaches storage unchecked
        raise ArtifactNotFound(f"Job {job_id} has no artifact {name!r}.", param="name")
    missing = ArtifactNotFound(f"Artifact {name!r} of job {job_id} is missing from the store.", param="name")
    return stored_file(storage, artifact_path(tenant, job_id, artifact.name), artifact.name, artifact.sha256, missing)
