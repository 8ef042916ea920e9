"""Programmatic labeling: `POST /v1/annotations` runs labeling functions (keywords, regular expressions, a local
model's zero-shot guess) over an uploaded file's rows on a worker and combines their votes with Snorkel's LabelModel
(core/annotation.py, jobs/annotate_job.py). The API checks the request (every label known, every model under the
roots, the text field in the file), records it and enqueues it; once the worker has written the labeled rows, the
first read registers them as an ordinary file (`output_file_id`), which a job can train on like an upload."""

from __future__ import annotations

import time

from fastapi import APIRouter

from ftjobs.client.models import FileObject
from ftjobs.client.models.annotations import (
    Annotation,
    AnnotationCreate,
    AnnotationError,
    AnnotationList,
    AnnotationStatus,
    ZeroShotFunction,
)
from ftjobs.core import annotation as core
from ftjobs.core.base_models import ModelEscapesRoots, resolve_model
from ftjobs.core.keys import file_path, file_profile_path
from ftjobs.core.settings import Settings
from ftjobs.core.storage import Storage
from ftjobs.service.deps import SettingsDep, StorageDep, StoreDep, TenantDep
from ftjobs.service.errors import (
    AnnotationNotFound,
    FileNotFound,
    MalformedBody,
    ModelNotAllowed,
    ServiceError,
    ValidationError,
    error_responses,
)
from ftjobs.service.file_profiles import load_profile, save_profile
from ftjobs.service.job_checks import check_links, check_model, tenant_form
from ftjobs.service.readers import JsonlReader
from ftjobs.service.routes import jobs
from ftjobs.service.store import Store

router = APIRouter(prefix="/v1/annotations", tags=["annotations"])
READ_CHUNK = 1 << 20


def check_request(req: AnnotationCreate, settings: Settings, store: Store, storage: Storage, tenant: str) -> None:
    """What pydantic cannot see: labels known and distinct, names unique, models under the roots, the text field
    in the file. 422 (404 for the file) naming the field."""
    if len(set(req.labels)) != len(req.labels):
        raise ValidationError("labels must be distinct.", param="labels")
    known = set(req.labels)
    names = core.function_names(req.functions)
    roots = [str(r) for r in settings.model_roots]
    for i, f in enumerate(req.functions):
        where = f"functions[{i}]"
        if f.label is not None and f.label not in known:
            raise ValidationError(
                f"{where}.label {f.label!r} is not one of labels {req.labels}.", param=f"{where}.label"
            )
        if isinstance(f, ZeroShotFunction):
            unknown = sorted(set(f.descriptions) - known)
            if unknown:
                raise ValidationError(f"{where}.descriptions: {unknown} not in labels {req.labels}.",
                                      param=f"{where}.descriptions")  # fmt: skip
            if f.label is not None and f.label not in f.descriptions:
                raise ValidationError(f"{where}.label {f.label!r} has no description.", param=f"{where}.label")
            check_zero_shot_model(f, settings, roots, f"{where}.model")
        if names[i] in names[:i]:
            raise ValidationError(f"{where}.name {names[i]!r} is not unique.", param=f"{where}.name")
    if req.class_balance is not None and set(req.class_balance) != known:
        raise ValidationError("class_balance must give a share for every label, and only for them.",
                              param="class_balance")  # fmt: skip
    file = store.get_file(tenant, req.file_id, param="file_id")
    if file.purpose != "fine-tune":
        raise ValidationError(f"file {file.id} is a job's results, not a dataset.", param="file_id")
    columns = load_profile(storage, file).columns
    if req.text_field not in columns:
        raise ValidationError(f"text_field {req.text_field!r} is not a field of file {file.id} (fields: "
                              f"{', '.join(columns[:20])}).", param="text_field")  # fmt: skip


def check_zero_shot_model(f: ZeroShotFunction, settings: Settings, roots: list[str], param: str) -> None:
    check_model(f.model, roots, param=param)
    check_links(f.model, roots, param=param)
    try:
        found = resolve_model(f.model, settings.model_roots)
    except (ModelEscapesRoots, OSError, RuntimeError):
        found = None
    if found is None:
        raise ModelNotAllowed(f"{param} {f.model!r}: no model under the model roots (see GET /v1/models).",
                              param=param)  # fmt: skip
    f.model = tenant_form(f.model, roots)  # the record never holds a server path


def register_output(store: Store, storage: Storage, tenant: str, annotation: Annotation) -> Annotation:
    """A succeeded annotation's labeled rows as an ordinary file (once: a claim key; a file id derived from the
    annotation's); rows that do not make a dataset fail the annotation, `invalid_output`."""
    if annotation.status != AnnotationStatus.succeeded or annotation.output_file_id is not None:
        return annotation
    if not store.redis.set(core.file_claim_key(tenant, annotation.id), "1", nx=True, ex=core.CLAIM_TTL_S):
        return annotation  # registered beside us: the next read shows it
    file_id = core.output_file_id(tenant, annotation.id)
    source, path = core.output_path(tenant, annotation.id), file_path(tenant, file_id)
    filename = annotation.filename or f"{annotation.file_id}-labeled.jsonl"
    writer = storage.writer(path)
    reader = JsonlReader(1 << 62, writer.write)
    try:
        with storage.open(source) as fh:
            while chunk := fh.read(READ_CHUNK):
                reader.feed(chunk)
        summary = reader.finish(filename)
        writer.commit()
        file = FileObject(
            id=file_id, tenant=tenant, filename=filename, bytes=summary.bytes, rows=summary.rows,
            format=summary.format, sha256=summary.sha256, source_sha256=summary.sha256, created_at=int(time.time()),
            warnings=[w.message for w in summary.warnings], warning_details=summary.warnings,
        )  # fmt: skip
        save_profile(storage, file, reader.rows.profile.build(file_id))
        store.add_file(file)  # counted in the tenant's stored bytes; never refused (the tenant asked for it)
    except (ServiceError, FileNotFoundError) as e:  # no dataset (e.g. a text field other than `text`), or lost
        writer.abort()
        storage.delete(path)
        storage.delete(file_profile_path(tenant, file_id))
        if isinstance(e, ServiceError):
            error = AnnotationError(code="invalid_output", message=f"the labeled rows are not a dataset: {e.message}")
        else:
            error = AnnotationError(code="output_missing", message="the labeled rows are gone from the store")
        core.finish(annotation, AnnotationStatus.failed, error)
    except BaseException:
        writer.abort()
        storage.delete(path)
        storage.delete(file_profile_path(tenant, file_id))
        store.redis.delete(core.file_claim_key(tenant, annotation.id))
        raise
    finally:
        reader.close()
    if annotation.status == AnnotationStatus.succeeded:
        annotation.output_file_id = file_id
    core.save(store.redis, tenant, annotation)
    storage.delete(source)
    return annotation


def found(store: Store, settings: Settings, storage: Storage, tenant: str, annotation_id: str) -> Annotation:
    annotation = core.load(store.redis, tenant, annotation_id)
    if annotation is None:
        raise AnnotationNotFound(f"No annotation {annotation_id!r}.", param="annotation_id")
    annotation = core.settle(store.redis, settings, tenant, annotation)
    return register_output(store, storage, tenant, annotation)


@router.post(
    "",
    status_code=202,
    max_body_size=jobs.MAX_JSON_BODY_BYTES,
    responses=error_responses(MalformedBody, FileNotFound, ModelNotAllowed, ValidationError),
)
def create_annotation(
    req: AnnotationCreate, tenant: TenantDep, settings: SettingsDep, store: StoreDep, storage: StorageDep
) -> Annotation:
    """Label a file's rows with labeling functions combined by a label model (run by a worker; follow it with GET
    until it succeeds, then train on `output_file_id`)."""
    check_request(req, settings, store, storage, tenant)
    return core.create(store.redis, settings, tenant, req)


@router.get("", responses=error_responses(ValidationError))
def list_annotations(tenant: TenantDep, settings: SettingsDep, store: StoreDep, storage: StorageDep) -> AnnotationList:
    """The tenant's annotations, newest first."""
    listed = core.all_annotations(store.redis, tenant)
    return AnnotationList(data=[register_output(store, storage, tenant, core.settle(store.redis, settings, tenant, a))
                                for a in listed])  # fmt: skip


@router.get("/{annotation_id}", responses=error_responses(AnnotationNotFound, ValidationError))
def get_annotation(
    annotation_id: str, tenant: TenantDep, settings: SettingsDep, store: StoreDep, storage: StorageDep
) -> Annotation:
    """One annotation: status, each function's coverage/overlaps/conflicts, the label model, the output file."""
    return found(store, settings, storage, tenant, annotation_id)
