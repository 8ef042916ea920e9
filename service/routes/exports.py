"""Exports for serving: `POST /v1/jobs/{job_id}/exports` writes a succeeded job's weights as a merged safetensors
model, GGUF (llama.cpp/Ollama) or a vLLM adapter folder, on a worker (core/exports.py, jobs/export_job.py); the API
only checks the request against the job, records the export and enqueues it."""

from __future__ import annotations

import json
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import StreamingResponse

from ftjobs.client.models import Job, JobStatus, Task
from ftjobs.client.models.exports import Export, ExportCreate, ExportFormat, ExportList
from ftjobs.core import exports, keys
from ftjobs.core.base_models import ModelEscapesRoots, resolve_model
from ftjobs.core.settings import Settings
from ftjobs.service.deps import SettingsDep, StorageDep, StoreDep, TenantDep
from ftjobs.service.errors import (
    ExportNotFound,
    ExportNotSupported,
    JobNotExportable,
    JobNotFound,
    MalformedBody,
    ValidationError,
    error_responses,
)
from ftjobs.service.routes import jobs
from ftjobs.service.routes.artifacts import DOWNLOAD, stored_file
from ftjobs.service.store import Store

router = APIRouter(prefix="/v1/jobs/{job_id}/exports", tags=["exports"])

MERGEABLE = ("full", "lora", "ia3")  # methods whose weights fold into the base model
CAUSAL = (Task.causal_lm, Task.dpo)
GGUF_ARCHITECTURES = ("llama",)  # config.json model_type the GGUF writer maps (jobs/outputs/export_gguf.py)


def exportable_job(store: Store, tenant: str, job_id: str) -> Job:
    """The succeeded training job whose weights are exported; 409 when it has none (yet)."""
    job = store.get_job(tenant, job_id)
    if job.status != JobStatus.succeeded or job.evaluate_only:
        what = "an evaluation job, which has no weights" if job.evaluate_only else job.status.value
        raise JobNotExportable(f"job {job.id} is {what}; only a succeeded training job can be exported.",
                               param="job_id")  # fmt: skip
    if store.redis.sismember(keys.deleted_models_key(tenant), job.id):
        raise JobNotExportable(f"job {job.id}'s fine-tuned model was deleted.", param="job_id")
    return job


def check_format(job: Job, req: ExportCreate, settings: Settings) -> None:
    """The format fits the job's task, method and base architecture; 422 naming `format` otherwise."""
    kind, fmt = job.method.type, req.format.value
    if req.format == ExportFormat.vllm:
        if job.task not in CAUSAL or kind != "lora" or getattr(job.method, "use_dora", False):
            what = "DoRA" if kind == "lora" else f"a {job.task.value} job with method {kind}"
            raise ExportNotSupported(f"format vllm: vLLM serves LoRA adapters of causal LMs, not {what}; export "
                                     "format safetensors (a merged model vLLM serves as it is) instead.",
                                     param="format")  # fmt: skip
        return
    if kind not in MERGEABLE:
        raise ExportNotSupported(f"format {fmt}: method {kind} does not merge into the base model (only "
                                 f"{', '.join(MERGEABLE)} do); serve its adapter/ artifacts with peft.",
                                 param="format")  # fmt: skip
    if req.format == ExportFormat.gguf:
        if job.task not in CAUSAL:
            raise ExportNotSupported(f"format gguf: a {job.task.value} job; GGUF exports are for causal LMs.",
                                     param="format")  # fmt: skip
        arch = model_type(job, settings)
        if arch not in GGUF_ARCHITECTURES:
            raise ExportNotSupported(f"format gguf: the base model's architecture is {arch or 'unknown'}; GGUF "
                                     f"exports support {', '.join(GGUF_ARCHITECTURES)}.", param="format")  # fmt: skip


def model_type(job: Job, settings: Settings) -> str | None:
    """config.json's model_type of the job's base model (None when the model is gone from the roots)."""
    try:
        folder = resolve_model(job.model, settings.model_roots)
    except ModelEscapesRoots:
        return None
    if folder is None:
        return None
    try:
        config = json.loads(Path(folder, "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return str(config.get("model_type")) if isinstance(config, dict) and config.get("model_type") else None


def found(store: Store, settings: Settings, storage: object, tenant: str, job_id: str, export_id: str) -> Export:
    store.get_job(tenant, job_id)  # 404 for another tenant's job
    export = exports.load(store.redis, tenant, job_id, export_id)
    if export is None:
        raise ExportNotFound(f"Job {job_id} has no export {export_id!r}.", param="export_id")
    return exports.settle(store.redis, settings, tenant, export, storage)


@router.post(
    "",
    status_code=202,
    max_body_size=jobs.MAX_JSON_BODY_BYTES,
    responses=error_responses(MalformedBody, JobNotFound, JobNotExportable, ExportNotSupported, ValidationError),
)
def create_export(job_id: str, req: ExportCreate, tenant: TenantDep, settings: SettingsDep, store: StoreDep) -> Export:
    """Export a succeeded job's weights for serving (run by a worker; follow it with GET until it succeeds)."""
    job = exportable_job(store, tenant, job_id)
    check_format(job, req, settings)
    queue = job.resolved_hyperparameters.get("queue")
    return exports.create(store.redis, settings, tenant, job.id, req, queue if isinstance(queue, str) else None)


@router.get("", responses=error_responses(JobNotFound, ValidationError))
def list_exports(
    job_id: str, tenant: TenantDep, settings: SettingsDep, store: StoreDep, storage: StorageDep
) -> ExportList:
    """List a job's exports, oldest first."""
    store.get_job(tenant, job_id)
    listed = exports.all_exports(store.redis, tenant, job_id)
    return ExportList(data=[exports.settle(store.redis, settings, tenant, e, storage) for e in listed])


@router.get("/{export_id}", responses=error_responses(JobNotFound, ExportNotFound, ValidationError))
def get_export(
    job_id: str, export_id: str, tenant: TenantDep, settings: SettingsDep, store: StoreDep, storage: StorageDep
) -> Export:
    """One export: its status, events, files (with sha256) and what was checked after writing."""
    return found(store, settings, storage, tenant, job_id, export_id)


@router.get(
    "/{export_id}/files/{name:path}",
    response_class=StreamingResponse,
    responses={200: DOWNLOAD, **error_responses(JobNotFound, ExportNotFound, ValidationError)},
)
def download_export_file(
    job_id: str, export_id: str, name: str, tenant: TenantDep, settings: SettingsDep, store: StoreDep,
    storage: StorageDep,
) -> StreamingResponse:  # fmt: skip
    """Download one file of a succeeded export (streamed), e.g. `model.gguf` or `manifest.json`."""
    export = found(store, settings, storage, tenant, job_id, export_id)
    listed = next((f for f in export.files if f.name == name), None)
    if listed is None:  # only a finished export's listed files are served: no path reaches storage unchecked
        raise ExportNotFound(f"Export {export_id} has no file {name!r} ({export.status.value}).", param="name")
    path = f"{exports.export_dir(tenant, job_id, export_id)}/{listed.name}"
    missing = ExportNotFound(f"File {name!r} of export {export_id} is missing from the store.", param="name")
    return stored_file(storage, path, listed.name, listed.sha256, missing)
