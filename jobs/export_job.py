"""`ftjobs.jobs.export_job.run`: one export for serving of a succeeded job (core/exports.py has the record).

    the job's weights -> the model as it trained it (reference logits) -> the format's files -> checked -> manifest
    -> uploaded to the export's staging folder -> moved under exports/<id>/ -> the record `succeeded`

Formats: `safetensors` (the adapter merged into the base, in fp16/bf16/f32, with tokenizer and config; reloaded and
its logits compared), `gguf` (llama: the merged model in F16/Q8_0 plus a LoRA job's adapter as a GGUF adapter;
re-read with GGUFReader, and loaded back through transformers' GGUF reader or llama-cpp-python where it is
installed, whose logits/greedy tokens are compared), `vllm` (the LoRA adapter folder and the `vllm serve` line).
Any failure: the staging folder is deleted and the record says `failed` with the reason; nothing half-written stays.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from ftjobs.client.models import Artifact, JobCreate
from ftjobs.client.models.exports import Export, ExportError, ExportFormat, ExportStatus
from ftjobs.core import exports, keys
from ftjobs.core.base_models import shown_model
from ftjobs.core.queue import connect
from ftjobs.core.records import decode_hash
from ftjobs.core.settings import Settings
from ftjobs.core.storage import Storage
from ftjobs.jobs.data.inputs import resolve_model_path
from ftjobs.jobs.outputs import export_files, export_weights
from ftjobs.jobs.outputs.artifacts import MANIFEST, describe

log = logging.getLogger("ftjobs.export")


def run(payload: dict[str, Any]) -> dict[str, Any]:
    """RQ job function: one export; returns a small summary (the record is the lasting result)."""
    fields = exports.payload_fields(payload)
    if fields is None:
        raise ValueError("not an export payload")
    tenant, job_id, export_id = fields["tenant"], fields["job_id"], fields["export_id"]
    settings = Settings.from_env()
    redis = connect(settings.redis_url)
    store = Storage(settings.storage_url)
    export = exports.load(redis, tenant, job_id, export_id)
    if export is None or export.status != ExportStatus.queued:  # deleted, or already run by another worker
        return {"export_id": export_id, "status": "skipped"}
    export.status, export.started_at = ExportStatus.running, int(time.time())
    exports.event(export, f"running: {exports.describe(export)}")
    exports.save(redis, tenant, export)
    staging = exports.staging_dir(tenant, job_id, export_id)

    def note(message: str) -> None:
        exports.event(export, message)
        exports.save(redis, tenant, export)

    try:
        with tempfile.TemporaryDirectory(prefix="ftjobs-export-") as tmp:
            record = decode_hash(redis.hgetall(keys.job_key(tenant, job_id)))
            request = JobCreate.model_validate(record["request"])
            out = Path(tmp) / "out"
            out.mkdir()
            export.checks = write(export, request, settings, store, tenant, Path(tmp), out, note)
            export.files = publish(store, out, tenant, job_id, export_id, export, request, settings)
        exports.finish(export, ExportStatus.succeeded)
    except Exception as e:  # the export fails, the worker goes on: nothing of it stays in the store
        log.warning("export %s of %s failed", export_id, job_id, exc_info=True)
        store.delete(staging)
        store.delete(exports.export_dir(tenant, job_id, export_id))  # a move cut short: none of it stays
        code = "check_failed" if isinstance(e, export_weights.CheckFailed) else "export_failed"
        exports.finish(export, ExportStatus.failed, ExportError(code=code, message=f"{type(e).__name__}: {e}"[:2000]))
    finally:
        exports.save(redis, tenant, export)
        redis.close()
    return {"export_id": export_id, "status": export.status.value}


def write(
    export: Export, request: JobCreate, settings: Settings, store: Storage, tenant: str, work: Path, out: Path,
    note: Any,
) -> dict[str, Any]:  # fmt: skip
    """The format's files under `out`, checked; returns what was checked."""
    base = resolve_model_path(request.model, settings.model_roots)
    shown = shown_model(request.model, settings.model_roots)
    weights = export_weights.fetch_weights(store, tenant, export.job_id, request.method.type, work)
    note(f"fetched the job's {weights.kind}/ weights")
    if export.format == ExportFormat.vllm:
        return export_files.write_vllm(out, weights, request, export, shown)
    task = request.task.value
    model, tokenizer = export_weights.load_job_model(task, base, weights)
    batch = export_weights.inputs(tokenizer, task)
    reference = export_weights.logits(model, batch)
    full = export_weights.merged(model)
    unmerged_check = export_weights.compare(reference, export_weights.logits(full, batch), "merge", 1e-4)
    note("merged the adapter into the base model" if weights.kind == "adapter" else "loaded the job's full model")
    if export.format == ExportFormat.safetensors:
        assert export.dtype is not None
        export_weights.save_merged(full, tokenizer, out / "model", export.dtype.value, shown)
        checks = {
            "merge": unmerged_check,
            "reload": export_weights.check_reload(out / "model", task, export.dtype.value, reference, batch),
        }
        export_files.write_readme(out, export_files.safetensors_readme(shown, request, export))
        return checks
    assert export.quantization is not None
    return export_files.write_gguf(out, full, tokenizer, weights, request, export, shown, reference, batch, note)


def publish(
    store: Storage, out: Path, tenant: str, job_id: str, export_id: str, export: Export, request: JobCreate,
    settings: Settings,
) -> list[Artifact]:  # fmt: skip
    """manifest.json (every file with sha256 and size, the format, dtype, base model, job id) written last, all
    uploaded to the staging folder, then moved under the export's folder together."""
    names = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    described = [describe(out, name) for name in names]
    manifest = {
        "export_id": export_id,
        "job_id": job_id,
        "format": export.format.value,
        "dtype": export.dtype.value if export.dtype else None,
        "quantization": export.quantization.value if export.quantization else None,
        "base_model": shown_model(request.model, settings.model_roots),  # as the tenant sees it, never a server path
        "task": request.task.value,
        "method": request.method.type,
        "checks": export.checks,
        "files": [a.model_dump(include={"name", "bytes", "sha256"}) for a in described],
    }
    (out / MANIFEST).write_bytes(exports.manifest_json(manifest))
    files = [*described, describe(out, MANIFEST)]
    staging, final = exports.staging_dir(tenant, job_id, export_id), exports.export_dir(tenant, job_id, export_id)
    for a in files:  # manifest last
        store.upload(out / a.name, f"{staging}/{a.name}")
    for a in files:
        store.move(f"{staging}/{a.name}", f"{final}/{a.name}")
    store.delete(staging)
    shutil.rmtree(out, ignore_errors=True)
    return files
