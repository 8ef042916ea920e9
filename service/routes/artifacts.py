"""A job's finalised artifacts: list them, stream one with its sha256."""

from __future__ import annotations

import mimetypes
import posixpath
from urllib.parse import quote

from fastapi import APIRouter
from fastapi.responses import StreamingResponse

from ftjobs.client.models import ArtifactList
from ftjobs.core.keys import artifact_path
from ftjobs.service.deps import StorageDep, StoreDep, TenantDep
from ftjobs.service.errors import ArtifactNotFound, JobNotFound, ValidationError, error_responses

router = APIRouter(prefix="/v1/jobs/{job_id}/artifacts", tags=["artifacts"])

DOWNLOAD = {
    "description": "The artifact's bytes; `X-Content-SHA256` carries its sha256.",
    "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
}


def content_disposition(name: str) -> str:
    """`attachment` with an ASCII fallback name and the exact UTF-8 one (RFC 6266)."""
    base = posixpath.basename(name) or "artifact"
    fallback = "".join(c if c.isascii() and c.isprintable() and c not in '"\\' else "_" for c in base)
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(base, safe='')}"


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
    if (
        artifact is None
    ):  # only listed (finalised) artifacts are served: no path ever reaches storage unchecked
        raise ArtifactNotFound(f"Job {job_id} has no artifact {name!r}.", param="name")
    path = artifact_path(tenant, job_id, artifact.name)
    try:
        size = storage.size(path)
        handle = storage.open(path)
    except FileNotFoundError:
        raise ArtifactNotFound(
            f"Artifact {name!r} of job {job_id} is missing from the store.", param="name"
        ) from None
    headers = {
        "X-Content-SHA256": artifact.sha256,
        "Content-Length": str(size),
        "Content-Disposition": content_disposition(artifact.name),
    }
    media_type = mimetypes.guess_type(artifact.name)[0] or "application/octet-stream"
    return StreamingResponse(storage.iter_bytes(handle), media_type=media_type, headers=headers)
