"""`ftjobs.jobs.annotate_job.run`: one annotation of an uploaded file's rows (core/annotation.py has the record).

    the file's rows -> each labeling function's votes (jobs/annotate_lfs.py) -> Snorkel's LabelModel -> the labeled
    rows (each with its provenance) uploaded to the annotation's output path -> the record `succeeded`, with the
    functions' coverage/overlaps/conflicts and the label model's summary

A row keeps a label it already had in `label_field` (one of `labels`): source `given`; those rows also score the
functions and the label model. A row no function voted on and with no given label is left out of the output (its
count is `label_model.abstained`). The API registers the output as an ordinary file on its next read.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from ftjobs.client.models.annotations import (
    Annotation,
    AnnotationError,
    AnnotationStatus,
    FunctionStats,
    LabelModelSummary,
)
from ftjobs.core import annotation as core
from ftjobs.core import keys
from ftjobs.core.queue import connect
from ftjobs.core.settings import Settings
from ftjobs.core.storage import Storage
from ftjobs.jobs.annotate_lfs import ABSTAIN, Combined, combine, label_matrix
from ftjobs.jobs.data.inputs import resolve_model_path

log = logging.getLogger("ftjobs.annotate")


class InvalidRows(ValueError):
    """A row the functions cannot read (not JSON, or no string text field)."""


def run(payload: dict[str, Any]) -> dict[str, Any]:
    """RQ job function: one annotation; returns a small summary (the record is the lasting result)."""
    fields = core.payload_fields(payload)
    if fields is None:
        raise ValueError("not an annotation payload")
    tenant, annotation_id = fields["tenant"], fields["annotation_id"]
    settings = Settings.from_env()
    redis = connect(settings.redis_url)
    store = Storage(settings.storage_url)
    annotation = core.load(redis, tenant, annotation_id)
    if annotation is None or annotation.status != AnnotationStatus.queued:
        return {"annotation_id": annotation_id, "status": "skipped"}
    annotation.status, annotation.started_at = AnnotationStatus.running, int(time.time())
    core.save(redis, tenant, annotation)
    try:
        annotate(annotation, tenant, settings, store)
        core.finish(annotation, AnnotationStatus.succeeded)
    except Exception as e:  # the annotation fails, the worker goes on
        log.warning("annotation %s failed", annotation_id, exc_info=not isinstance(e, InvalidRows))
        store.delete(core.output_path(tenant, annotation_id))
        code = "invalid_rows" if isinstance(e, InvalidRows) else "annotation_failed"
        message = str(e) if isinstance(e, InvalidRows) else f"{type(e).__name__}: {e}"
        core.finish(annotation, AnnotationStatus.failed, AnnotationError(code=code, message=message[:2000]))
    finally:
        core.save(redis, tenant, annotation)
        redis.close()
    return {"annotation_id": annotation_id, "status": annotation.status.value}


def read_rows(store: Storage, tenant: str, annotation: Annotation) -> tuple[list[dict[str, Any]], list[str]]:
    rows, texts = [], []
    with store.open(keys.file_path(tenant, annotation.file_id)) as fh:
        for line_no, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = orjson.loads(line)
            except orjson.JSONDecodeError:
                raise InvalidRows(f"line {line_no} is not a JSON object") from None
            text = row.get(annotation.text_field) if isinstance(row, dict) else None
            if not isinstance(text, str):
                raise InvalidRows(f"line {line_no} has no string field {annotation.text_field!r} (text_field)")
            rows.append(row)
            texts.append(text)
    return rows, texts


def annotate(annotation: Annotation, tenant: str, settings: Settings, store: Storage) -> None:
    rows, texts = read_rows(store, tenant, annotation)
    labels = annotation.labels
    index = {label: i for i, label in enumerate(labels)}
    known = annotation.given_field or annotation.label_field
    given = np.array([index.get(r[known], ABSTAIN) if isinstance(r.get(known), str) else ABSTAIN for r in rows],
                     dtype=np.int64)  # fmt: skip
    L = label_matrix(texts, annotation.functions, labels, lambda m: resolve_model_path(m, settings.model_roots),
                     lambda message: log.info("annotation %s: %s", annotation.id, message))  # fmt: skip
    prior = [annotation.class_balance[label] for label in labels] if annotation.class_balance else None
    combined = combine(L, len(labels), annotation.epochs, annotation.seed, given, prior)
    names = [f["name"] for f in annotation.functions]
    written = write_output(rows, L, combined, given, annotation, names, store, tenant)
    annotation.function_stats = function_stats(L, combined, given, annotation, names)
    annotation.label_model = summary(L, combined, given, labels, written, names)


def write_output(
    rows: list[dict[str, Any]], L: np.ndarray, c: Combined, given: np.ndarray, annotation: Annotation,
    names: list[str], store: Storage, tenant: str,
) -> Counter[str]:  # fmt: skip
    """The labeled rows (given or covered), each with its provenance, uploaded as JSONL; the labels written."""
    labels, written = annotation.labels, Counter[str]()
    with tempfile.TemporaryDirectory(prefix="ftjobs-annotate-") as tmp:
        local = Path(tmp) / "labeled.jsonl"
        with local.open("wb") as out:
            for i, row in enumerate(rows):
                votes = {names[j]: labels[v] for j, v in enumerate(L[i]) if v != ABSTAIN}
                if given[i] != ABSTAIN:
                    label, source, probability = labels[given[i]], "given", None
                elif c.predicted[i] != ABSTAIN:
                    label, source, probability = labels[c.predicted[i]], c.method, round(float(c.probability[i]), 4)
                else:
                    continue  # every function abstained: left out
                written[label] += 1
                provenance = {"source": source, "probability": probability, "votes": votes}
                out.write(orjson.dumps({**row, annotation.label_field: label, annotation.provenance_field: provenance}))
                out.write(b"\n")
        store.upload(local, core.output_path(tenant, annotation.id))
    return written


def function_stats(
    L: np.ndarray, c: Combined, given: np.ndarray, annotation: Annotation, names: list[str]
) -> list[FunctionStats]:
    stats = []
    for j, f in enumerate(annotation.functions):
        column = L[:, j]
        scored = (given != ABSTAIN) & (column != ABSTAIN)
        stats.append(
            FunctionStats(
                name=names[j],
                type=f["type"],
                polarity=[annotation.labels[v] for v in sorted(set(column) - {ABSTAIN})],
                coverage=round(float(c.coverage[j]), 4),
                overlaps=round(float(c.overlaps[j]), 4),
                conflicts=round(float(c.conflicts[j]), 4),
                votes=int((column != ABSTAIN).sum()),
                accuracy=round(float((column[scored] == given[scored]).mean()), 4) if scored.any() else None,
            )  # fmt: skip
        )
    return stats


def summary(
    L: np.ndarray, c: Combined, given: np.ndarray, labels: list[str], written: Counter[str], names: list[str]
) -> LabelModelSummary:
    covered = (L != ABSTAIN).any(axis=1)
    scored = covered & (given != ABSTAIN)
    labeled = covered & (given == ABSTAIN)
    return LabelModelSummary(
        method=c.method, cardinality=len(labels), rows=len(L), given=int((given != ABSTAIN).sum()),
        labeled=int(labeled.sum()), abstained=int((~covered & (given == ABSTAIN)).sum()),
        coverage=round(float(covered.mean()), 4) if len(L) else 0.0,
        class_balance={label: written[label] for label in labels},
        function_weights={} if np.isnan(c.weights).all() else {
            name: round(float(w), 4) for name, w in zip(names, c.weights, strict=True)
        },
        accuracy=round(float((c.predicted[scored] == given[scored]).mean()), 4) if scored.any() else None,
        majority_vote_accuracy=round(float((c.majority[scored] == given[scored]).mean()), 4) if scored.any() else None,
        mean_probability=round(float(c.probability[labeled].mean()), 4) if labeled.any() else None,
    )  # fmt: skip
