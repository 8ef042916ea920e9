"""Programmatic labeling (core's half, shared by the API, which creates annotations, reads them and registers their
output file, and the worker, which runs them: jobs/annotate_job.py).

An annotation is one RQ job `ftjobs.jobs.annotate_job.run` on the training queue (a worker that may load a model for
the zero-shot function), with its record in the Redis hash `ftjobs:annotations:{tenant}` (id -> Annotation JSON).
The API writes it `queued` and enqueues; then the worker is its one writer until it concludes (succeeded, with the
labeled rows at `output_path`, or failed). The worker cannot register a file (quotas and file records are the API's):
the first read of a succeeded annotation by the API does (service/routes/annotations.py), under a claim key, with a
file id derived from the annotation's id. A horse that died leaves the record `running` while RQ says its job
failed: `settle` (on every read) marks it failed, `worker_lost`.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

from redis import Redis

from ftjobs.client.models.annotations import Annotation, AnnotationCreate, AnnotationError, AnnotationStatus
from ftjobs.core import keys
from ftjobs.core.queue import JobQueue
from ftjobs.core.records import as_text, new_id
from ftjobs.core.settings import Settings

ANNOTATE_FUNC = "ftjobs.jobs.annotate_job.run"  # the RQ job (jobs/worker.py runs it among ftjobs' own)
ANNOTATE_TIMEOUT_S = 6 * 3600
LOST_STATES = {"failed", "stopped", "canceled", "missing"}
CLAIM_TTL_S = 600


def annotations_key(tenant: str) -> str:
    return f"{keys.PREFIX}:annotations:{tenant}"


def file_claim_key(tenant: str, annotation_id: str) -> str:
    return f"{keys.PREFIX}:annotation-file:{tenant}:{annotation_id}"


def output_path(tenant: str, annotation_id: str) -> str:
    """Where the worker leaves the labeled JSONL rows for the API to register as a file."""
    return f"{tenant}/annotations/{annotation_id}/labeled.jsonl"


def output_file_id(tenant: str, annotation_id: str) -> str:
    return "file-" + hashlib.sha256(f"{tenant}/{annotation_id}/labeled".encode()).hexdigest()[:20]


def rq_id(annotation_id: str) -> str:
    return f"{annotation_id}-run"


def function_names(functions: list[Any]) -> list[str]:
    """Each function's name: its own, else `<type>_<label>_<index>` (zero_shot without a label: `zero_shot_<i>`)."""
    names = []
    for i, f in enumerate(functions):
        label = getattr(f, "label", None)
        default = f"{f.type}_{label}_{i}" if label else f"{f.type}_{i}"
        names.append(f.name or "".join(c if c.isalnum() or c in "._-" else "_" for c in default)[:64])
    return names


def save(redis: Redis, tenant: str, annotation: Annotation) -> None:
    redis.hset(annotations_key(tenant), annotation.id, annotation.model_dump_json())


def load(redis: Redis, tenant: str, annotation_id: str) -> Annotation | None:
    raw = redis.hget(annotations_key(tenant), annotation_id)
    return Annotation.model_validate_json(raw) if raw is not None else None


def all_annotations(redis: Redis, tenant: str) -> list[Annotation]:
    raw = redis.hgetall(annotations_key(tenant))
    found = [Annotation.model_validate_json(as_text(v)) for v in raw.values()]
    return sorted(found, key=lambda a: a.id, reverse=True)  # ids are time-ordered: newest first


def create(redis: Redis, settings: Settings, tenant: str, req: AnnotationCreate) -> Annotation:
    """The record (`queued`, each function named) and its RQ job on the training queue."""
    names = function_names(req.functions)
    functions = [{**f.model_dump(mode="json"), "name": n} for f, n in zip(req.functions, names, strict=True)]
    annotation = Annotation(
        id=new_id("annot-"), status=AnnotationStatus.queued, file_id=req.file_id, text_field=req.text_field,
        label_field=req.label_field, given_field=req.given_field, labels=req.labels, functions=functions,
        created_at=int(time.time()), provenance_field=req.provenance_field, class_balance=req.class_balance,
        epochs=req.epochs, seed=req.seed, filename=req.filename,
    )  # fmt: skip
    save(redis, tenant, annotation)
    JobQueue(redis, settings).queue(settings.queue).enqueue(
        ANNOTATE_FUNC,
        kwargs={"payload": {"tenant": tenant, "annotation_id": annotation.id}},
        job_id=rq_id(annotation.id),
        job_timeout=ANNOTATE_TIMEOUT_S,
        result_ttl=24 * 3600,
        failure_ttl=7 * 24 * 3600,
        description=f"annotation {annotation.id} of {req.file_id} (tenant {tenant})",
    )
    return annotation


def finish(annotation: Annotation, status: AnnotationStatus, error: AnnotationError | None = None) -> None:
    annotation.status, annotation.error, annotation.finished_at = status, error, int(time.time())


def settle(redis: Redis, settings: Settings, tenant: str, annotation: Annotation) -> Annotation:
    """An annotation whose RQ job ended without the worker concluding it (its horse was killed): failed."""
    if annotation.status not in (AnnotationStatus.queued, AnnotationStatus.running):
        return annotation
    state = JobQueue(redis, settings).state(rq_id(annotation.id))
    if state not in LOST_STATES:
        return annotation
    fresh = load(redis, tenant, annotation.id)  # the worker may have concluded it meanwhile
    if fresh is None or fresh.status not in (AnnotationStatus.queued, AnnotationStatus.running):
        return fresh or annotation
    message = f"the worker running it was lost (its RQ job is {state}); create the annotation again"
    finish(fresh, AnnotationStatus.failed, AnnotationError(code="worker_lost", message=message))
    save(redis, tenant, fresh)
    return fresh


def payload_fields(payload: Any) -> dict[str, str] | None:
    """The worker's check of an annotation RQ job's payload: exactly tenant and annotation_id, well-formed."""
    import re

    from ftjobs.client.models.annotations import ANNOTATION_ID_PATTERN
    from ftjobs.client.models.common import TENANT_PATTERN

    if not isinstance(payload, dict) or set(payload) != {"tenant", "annotation_id"}:
        return None
    patterns = {"tenant": TENANT_PATTERN, "annotation_id": ANNOTATION_ID_PATTERN}
    if not all(isinstance(payload[k], str) and re.match(p, payload[k]) for k, p in patterns.items()):
        return None
    return {k: str(payload[k]) for k in patterns}
