"""What a finished job leaves, in OpenAI's shapes, and deleting files and fine-tuned models.

- The result file: the job's metric points as a CSV (`step, epoch, train_loss, valid_loss, ...`), stored as a file
  of the tenant (purpose `fine-tune-results`) the first time the succeeded job is shown by the OpenAI API. Its id
  is derived from the job's, a SET NX claim makes it once; it counts towards the tenant's stored bytes like any file.
- Checkpoints: the per-epoch weights the worker keeps as artifacts (`checkpoints/step-<N>/adapter|model/`,
  jobs/training/epoch_weights.py) and the final model (`adapter/` or `model/`), each with the metrics logged up to
  its step and the download URL of its weights.
- Fine-tuned models: every succeeded job of the tenant, as `ft:<base>:<suffix>:<job id>`. Deleting one removes its
  weights (adapter/, model/, checkpoints/) from the artifact store and marks it deleted: it leaves the model list
  and cannot be continued, while the job keeps its record, metrics and other artifacts.
- Deleting a file gives its bytes and its place in the file count back to the tenant's quotas (service/limits.py).
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
import time
from dataclasses import dataclass
from typing import Any, cast

from ftjobs.client.models import (
    Artifact,
    FileObject,
    FineTuningJobCheckpoint,
    FineTuningJobCheckpointList,
    Job,
    JobStatus,
    MetricPoint,
)
from ftjobs.client.models.openai import CheckpointMetrics
from ftjobs.core import keys
from ftjobs.core.keys import JobField
from ftjobs.core.records import as_text, event_entry
from ftjobs.core.storage import Storage
from ftjobs.service.errors import FileNotFound, JobNotFound, ResourceInUse, ValidationError
from ftjobs.service.limits import REMOVE_FILE, file_usage_keys
from ftjobs.service.openai_jobs import fine_tuned_model
from ftjobs.service.store import ACTIVE_STATUSES, Store

RESULT_FILENAME = "step_metrics.csv"
CHECKPOINTS = re.compile(r"^checkpoints/step-([0-9]+)/")
WEIGHT_FOLDERS = ("adapter/", "model/")
MODEL_FOLDERS = (*WEIGHT_FOLDERS, "checkpoints/")  # what deleting a fine-tuned model removes
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt")
CHECKPOINT_ID = re.compile(r"^ftckpt-([0-9a-f]{20})-([0-9]{1,12})$")
FIRST_COLUMNS = ("step", "epoch", "train_loss", "valid_loss")
CLAIM_TTL_S = 300  # an API killed while making a result file: another request makes it after this


# ----------------------------------------------------------------------------- metrics


def metric_points(store: Store, tenant: str, job_id: str) -> list[MetricPoint]:
    points: list[MetricPoint] = []
    after = None
    while True:
        page = store.metrics(tenant, job_id, after, 1000)
        points += page.data
        if not page.has_more:
            return points
        after = page.last_id


def column(point: MetricPoint, name: str) -> str:
    """OpenAI's column names: `train_<name>`, `valid_<name>` (`eval_loss` -> `valid_loss`)."""
    return f"train_{name}" if point.split == "train" else "valid_" + name.removeprefix("eval_")


def metrics_rows(points: list[MetricPoint]) -> list[dict[str, Any]]:
    """One row per step, train and eval values side by side."""
    rows: dict[int, dict[str, Any]] = {}
    for point in points:
        row = rows.setdefault(point.step, {"step": point.step})
        if point.epoch is not None:
            row["epoch"] = point.epoch
        row.update({column(point, name): value for name, value in point.values.items()})
    return [rows[step] for step in sorted(rows)]


def metrics_csv(points: list[MetricPoint]) -> tuple[bytes, int]:
    rows = metrics_rows(points)
    seen = {name for row in rows for name in row}
    names = [c for c in FIRST_COLUMNS if c in seen or c == "step"] + sorted(seen - set(FIRST_COLUMNS))
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=names, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue().encode(), len(rows)


# ----------------------------------------------------------------------------- the result file


def result_file_id(tenant: str, job_id: str) -> str:
    return "file-" + hashlib.sha256(f"{tenant}/{job_id}/results".encode()).hexdigest()[:20]


def result_files(store: Store, storage: Storage, job: Job) -> list[str]:
    """The job's result file ids: its metrics CSV once it succeeded (made now if not yet), unless deleted since."""
    if job.status != JobStatus.succeeded:
        return []
    file_id = result_file_id(job.tenant, job.id)
    claim = keys.result_file_claim_key(job.tenant, job.id)
    if not store.redis.set(claim, file_id, nx=True, ex=CLAIM_TTL_S):  # made already (or being made beside us)
        made = as_text(store.redis.get(claim) or b"")
        being_made = not made.endswith(":done")
        return [file_id] if being_made or store.redis.exists(keys.file_key(job.tenant, file_id)) else []
    path = keys.file_path(job.tenant, file_id)
    try:
        data, rows = metrics_csv(metric_points(store, job.tenant, job.id))
        storage.write_bytes(path, data)
        file = FileObject(
            id=file_id,
            tenant=job.tenant,
            filename=f"{job.id}-{RESULT_FILENAME}",
            bytes=len(data),
            rows=rows,
            format=None,
            sha256=hashlib.sha256(data).hexdigest(),
            created_at=job.finished_at or int(time.time()),
            purpose="fine-tune-results",
            source_format="csv",
        )
        store.add_file(file)  # counted in the tenant's stored bytes; never refused (it is the job's output)
        store.redis.set(claim, f"{file_id}:done")
    except BaseException:
        store.redis.delete(claim)
        storage.delete(path)
        raise
    return [file_id]


# ----------------------------------------------------------------------------- checkpoints


@dataclass
class Weights:
    step: int
    prefix: str  # "" for the final model, "checkpoints/step-<N>/" for an epoch's
    file: Artifact  # the weights file to download


def weights_of(job: Job) -> list[Weights]:
    """The final model's and each kept epoch's weights, newest (highest step) first."""
    groups: dict[str, list[Artifact]] = {}
    for artifact in job.artifacts:
        match = CHECKPOINTS.match(artifact.name)
        prefix = match.group(0) if match else ""
        rest = artifact.name[len(prefix) :]
        if rest.startswith(WEIGHT_FOLDERS) and rest.endswith(WEIGHT_SUFFIXES):
            groups.setdefault(prefix, []).append(artifact)
    final_step = int(job.results.get("steps") or job.progress.step)
    found = []
    for prefix, files in groups.items():
        match = CHECKPOINTS.match(prefix)
        step = int(match.group(1)) if match else final_step
        found.append(Weights(step, prefix, max(files, key=lambda a: a.bytes)))
    return sorted(found, key=lambda w: (w.step, w.prefix == ""), reverse=True)


def checkpoint_metrics(points: list[MetricPoint], step: int) -> dict[str, Any]:
    """The last train and eval values logged up to `step`, with OpenAI's names."""
    metrics: dict[str, Any] = {"step": step}
    for point in points:
        if point.step <= step:
            metrics.update({column(point, name): value for name, value in point.values.items()})
    if "valid_token_accuracy" in metrics:
        metrics["valid_mean_token_accuracy"] = metrics["valid_token_accuracy"]
    return metrics


def list_checkpoints(
    store: Store, job: Job, base_url: str, after: str | None, limit: int
) -> FineTuningJobCheckpointList:
    """A page of the job's checkpoints, newest first (none until it succeeded, or once its model is deleted)."""
    before = None
    if after is not None:
        match = CHECKPOINT_ID.match(after)
        if match is None:
            raise ValidationError("after: must be a checkpoint id `ftckpt-<hex>-<step>`", param="after")
        before = int(match.group(2))
    deleted = store.redis.sismember(keys.deleted_models_key(job.tenant), job.id)
    model = fine_tuned_model(job)
    if model is None or deleted:
        return FineTuningJobCheckpointList(data=[], has_more=False)
    found = [w for w in weights_of(job) if before is None or w.step < before]
    points = metric_points(store, job.tenant, job.id) if found else []
    data = [
        FineTuningJobCheckpoint(
            id=f"ftckpt-{job.id.removeprefix('ftjob-')}-{w.step}",
            created_at=w.file.created_at,
            fine_tuned_model_checkpoint=f"{model}:ckpt-step-{w.step}",
            step_number=w.step,
            metrics=CheckpointMetrics.model_validate(checkpoint_metrics(points, w.step)),
            fine_tuning_job_id=job.id,
            download_url=f"{base_url.rstrip('/')}/v1/jobs/{job.id}/artifacts/{w.file.name}",
            artifacts_prefix=w.prefix + w.file.name[len(w.prefix) :].split("/", 1)[0] + "/",
        )
        for w in found[:limit]
    ]
    return FineTuningJobCheckpointList(data=data, has_more=len(found) > limit, last_id=data[-1].id if data else None)


# ----------------------------------------------------------------------------- deleting


def active_jobs(store: Store, tenant: str) -> list[Job]:
    """The tenant's jobs not yet finished (from the status index)."""
    store.ensure_status_index()
    jobs = []
    for status in ACTIVE_STATUSES:
        for job_id in cast(list[bytes], store.redis.zrange(keys.status_index_key(tenant, status), 0, -1)):
            try:
                jobs.append(store.get_job(tenant, as_text(job_id)))
            except JobNotFound:  # gone between the two reads
                continue
    return [job for job in jobs if not job.status.is_terminal]


def delete_file(store: Store, storage: Storage, tenant: str, file_id: str) -> None:
    """Forget the file and give its bytes back; ResourceInUse while an unfinished job trains on it."""
    store.get_file(tenant, file_id)
    for job in active_jobs(store, tenant):
        if file_id in (job.training_file, job.validation_file, job.reference_file):
            raise ResourceInUse(f"File {file_id} is used by job {job.id} ({job.status.value}).", param="file_id")
    script = store.redis.register_script(REMOVE_FILE)
    removed = script(
        keys=[*file_usage_keys(tenant)[:2], keys.file_key(tenant, file_id)], args=[keys.file_key(tenant, ""), file_id]
    )
    if int(removed) < 0:
        raise FileNotFound(f"No file {file_id!r}.")
    for path in (
        keys.file_path(tenant, file_id), keys.file_profile_path(tenant, file_id),
        keys.file_lines_path(tenant, file_id), keys.file_tokens_dir(tenant, file_id),
        keys.file_label_issues_path(tenant, file_id),
    ):  # fmt: skip
        storage.delete(path)


def delete_model(store: Store, storage: Storage, job: Job) -> None:
    """Remove the fine-tuned model's weights and mark it deleted; ResourceInUse while a job continues from it."""
    for child in active_jobs(store, job.tenant):
        if child.parent_job_id == job.id:
            raise ResourceInUse(f"Job {child.id} continues from this model ({child.status.value}).", param="model")
    store.redis.sadd(keys.deleted_models_key(job.tenant), job.id)
    kept = [a.model_dump(mode="json") for a in job.artifacts if not a.name.startswith(MODEL_FOLDERS)]
    store.guarded_write(  # the job lists only what is still there (its final job.json in the store is not rewritten)
        job.tenant,
        job.id,
        statuses=[JobStatus.succeeded],
        fields={JobField.artifacts: kept},
        entry=event_entry(f"Fine-tuned model {fine_tuned_model(job)} deleted: its weights were removed."),
    )
    for folder in MODEL_FOLDERS:
        storage.delete(keys.artifact_path(job.tenant, job.id, folder.rstrip("/")))
