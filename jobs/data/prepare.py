"""Data preparation between reading the rows and tokenizing them: clean, dedup, split, balance, augment.

Every step is a plain function over `Row`s and is reported with its rows in and out, so a job's
`results["data"]` (and the `data_report.json` artifact) says exactly what happened to the data. The
order matters: clean and dedup the training file, split off the validation rows (seeded, stratified),
drop likely label errors from the training split (jobs/data/label_issues.py), then augment and balance
the training split only, so no augmented copy of a row can leak into validation. With default `DataOptions`
nothing runs and the rows pass through untouched.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ftjobs.client.models import DEDUP_THRESHOLD, DataOptions, Hyperparameters, JobCreate, Task
from ftjobs.core.keys import job_dir
from ftjobs.core.storage import Storage
from ftjobs.jobs.data import augment, clean, label_issues
from ftjobs.jobs.data.inputs import fetch_rows
from ftjobs.jobs.data.read import Row
from ftjobs.jobs.data.split import class_weights, resample, split_rows

MODEL_AUGMENT = augment.MODEL_AUGMENT
PREPARED_FORMAT = 1  # of a saved first half: bump when clean_and_split's output changes, so none is reused


@dataclass
class PreparedData:
    train: list[Row]
    validation: list[Row] | None  # None: no validation file and no split made here (build_datasets splits)
    report: dict[str, Any] = field(default_factory=dict)
    class_weights: dict[str, float] | None = None  # label -> loss weight (balance="class_weights")
    notes: list[str] = field(default_factory=list)


class _Steps:
    def __init__(self) -> None:
        self.steps: list[dict[str, Any]] = []

    def add(self, step: str, rows_in: int, rows_out: int, **details: Any) -> None:
        self.steps.append({"step": step, "rows_in": rows_in, "rows_out": rows_out, **details})


def prepare_data(
    task: Task,
    options: DataOptions,
    train: list[Row],
    validation: list[Row] | None,
    validation_split: float,
    seed: int,
    model_roots: tuple[Path, ...] = (),
) -> PreparedData:
    """Run the steps `options` asks for; with default options return the rows untouched.

    `model_roots`: where paraphrase/back_translate find `options.augment_model`/`augment_back_model`.
    """
    cleaned = clean_and_split(task, options, train, validation, validation_split, seed)
    return augment_and_balance(task, options, cleaned, seed, model_roots)


def clean_and_split(
    task: Task,
    options: DataOptions,
    train: list[Row],
    validation: list[Row] | None,
    validation_split: float,
    seed: int,
) -> PreparedData:
    """The first half: clean and dedup the training rows, then split off the validation rows (none: untouched)."""
    if not options.active:
        return PreparedData(train, validation)
    classification = task == Task.classification
    steps = _Steps()
    label = clean.label
    labels_before = dict(Counter(label(r) for r in train)) if classification else None

    if options.normalize_text:
        changed = 0
        out = []
        for r in train:
            new = clean.map_text(r, clean.normalize_text)
            changed += new.data != r.data
            out.append(new)
        steps.add("normalize_text", len(train), len(out), rows_changed=changed)
        train = out
        if validation is not None:
            validation = [clean.map_text(r, clean.normalize_text) for r in validation]
    if options.drop_invalid:
        kept = [r for r in train if clean.is_valid(r, task)]
        dropped = [r.line for r in train if not clean.is_valid(r, task)][:20]
        steps.add("drop_invalid", len(train), len(kept), lines=dropped)
        train = kept
    if options.min_chars is not None or options.max_chars is not None:
        lo, hi = options.min_chars or 0, options.max_chars or 2**62
        kept = [r for r in train if lo <= len(clean.content(r)) <= hi]
        steps.add("length_filter", len(train), len(kept), min_chars=options.min_chars, max_chars=options.max_chars)
        train = kept
    if classification and options.normalize_labels:
        train, validation, merged = clean.normalize_labels(train, validation)
        steps.add("normalize_labels", len(train), len(train), merged=merged)
    if options.dedup != "none":
        n = len(train)
        train = clean.dedup(train, lambda r: json.dumps(r.data, sort_keys=True, ensure_ascii=False))
        steps.add("dedup_exact", n, len(train))
        if options.dedup in ("near", "minhash"):
            n = len(train)
            near = clean.near_key
            train = clean.dedup(train, lambda r: near(clean.content(r)) + "\x00" + (label(r) if classification else ""))
            steps.add("dedup_near", n, len(train))
        if options.dedup == "minhash":
            n, threshold = len(train), options.dedup_threshold or DEDUP_THRESHOLD
            train, pairs = clean.dedup_minhash(train, threshold, by_label=classification)
            examples = [[kept.line, dropped.line] for kept, dropped in pairs[:5]]
            steps.add(
                "dedup_minhash",
                n,
                len(train),
                threshold=threshold,
                shingles=f"character {clean.SHINGLE_CHARS}-grams",
                num_perm=clean.MINHASH_PERM,
                examples=examples,  # [kept line, dropped line]
            )
    if classification and options.drop_conflicting:
        by_text: dict[str, set[str]] = defaultdict(set)
        for r in train:
            by_text[str(r.data.get("text"))].add(label(r))
        kept = [r for r in train if len(by_text[str(r.data.get("text"))]) == 1]
        conflicting = sum(1 for labels in by_text.values() if len(labels) > 1)
        steps.add("drop_conflicting", len(train), len(kept), texts=conflicting)
        train = kept

    # Split before augmenting or resampling: nothing derived from a validation row may be trained on.
    report: dict[str, Any] = {"options": options.model_dump(mode="json"), "steps": steps.steps}
    if classification:
        report["labels_before"] = labels_before
    notes: list[str] = []
    if validation is None:
        stratify = [label(r) for r in train] if classification else None
        n = len(train)
        train, validation, note = split_rows(train, validation_split, seed, stratify)
        notes.append(note)
        report["split"] = {"seed": seed, "fraction": validation_split, "train": len(train)}
        report["split"]["validation"] = len(validation)
        steps.add("split", n, len(train), validation=len(validation))
    if classification and options.drop_label_issues:  # on the training split only: validation stays as given
        n = len(train)
        train, details = label_issues.drop_issues(train, seed)
        steps.add("drop_label_issues", n, len(train), **details)
    return PreparedData(train, validation, report, notes=notes)


def augment_and_balance(
    task: Task, options: DataOptions, cleaned: PreparedData, seed: int, model_roots: tuple[Path, ...] = ()
) -> PreparedData:
    """The second half, on the training split only: augment (EDA, term swaps, model rewrites), then balance."""
    if not options.active:
        return cleaned
    classification = task == Task.classification
    steps = _Steps()
    steps.steps = list(cleaned.report["steps"])
    rng = random.Random(seed)  # seeded here: the first half draws nothing from it
    label = clean.label
    train = originals = cleaned.train
    if {"eda", "swap_terms"} & set(options.augment):
        n = len(train)
        train = augment.augment_rows(train, options, rng)
        steps.add("augment", n, len(train), methods=[m for m in options.augment if m in ("eda", "swap_terms")])
    for method in MODEL_AUGMENT:
        if method in options.augment:
            added, details = augment.model_augment(method, originals, options, seed, model_roots)
            steps.add(method, len(train), len(train) + len(added), rows_added=len(added), **details)
            train = train + added
    weights = None
    if classification and options.balance != "none":
        n = len(train)
        before = dict(Counter(label(r) for r in train))
        if options.balance == "class_weights":
            weights = class_weights(train)
        else:
            train = resample(train, options.balance, rng)
        steps.add(
            f"balance_{options.balance}",
            n,
            len(train),
            before=before,
            after=dict(Counter(label(r) for r in train)),
            **({"class_weights": weights} if weights else {}),
        )
    report = {**cleaned.report, "steps": steps.steps}
    if classification:
        report["labels_after"] = dict(Counter(label(r) for r in train))
    return PreparedData(train, cleaned.validation, report, weights, list(cleaned.notes))


def prepare_job_data(
    store: Storage,
    tenant: str,
    job_id: str,
    request: JobCreate,
    hp: Hyperparameters,
    work: Path,
    model_roots: tuple[Path, ...] = (),
    model_augment: bool = True,
    save: bool = False,
) -> PreparedData:
    """A job's rows fetched and prepared as `request.data` asks. The job's validation (`save`, without
    `model_augment`) keeps the first half in the store; the training run reuses it when its key still matches
    (and deletes it), else fetches the files and runs it again. Both halves are seeded: the result is the same."""
    options = request.data
    key = first_half_key(request, hp)
    cleaned = None if save else _load_first_half(store, tenant, job_id, key, work)
    if cleaned is None:
        train = fetch_rows(store, tenant, request.training_file, "training_file", work)
        validation = None
        if request.validation_file:
            validation = fetch_rows(store, tenant, request.validation_file, "validation_file", work)
        cleaned = clean_and_split(request.task, options, train, validation, hp.validation_split, hp.seed)
        if save and options.active:  # with nothing asked, the first half is the files themselves
            _save_first_half(store, tenant, job_id, key, cleaned)
    if not model_augment:
        options = options.model_copy(update={"augment": [m for m in options.augment if m not in MODEL_AUGMENT]})
    return augment_and_balance(request.task, options, cleaned, hp.seed, model_roots)


def first_half_key(request: JobCreate, hp: Hyperparameters) -> str:
    """What the first half depends on: task, data options, files (a file id's content never changes), split, seed."""
    basis = {
        "format": PREPARED_FORMAT,
        "task": request.task.value,
        "data": request.data.model_dump(mode="json"),
        "files": [request.training_file, request.validation_file],
        "validation_split": hp.validation_split,
        "seed": hp.seed,
    }
    return hashlib.sha256(json.dumps(basis, sort_keys=True).encode()).hexdigest()[:32]


def prepared_dir(tenant: str, job_id: str) -> str:
    """Where the job's validation leaves the first half for its training run (one `<key>.json`)."""
    return f"{job_dir(tenant, job_id)}/prepared"


def _rows_json(rows: list[Row] | None) -> list[dict[str, Any]] | None:
    return None if rows is None else [{"line": r.line, "file": r.file, "unit": r.unit, "data": r.data} for r in rows]


def _rows(raw: list[dict[str, Any]] | None) -> list[Row] | None:
    return None if raw is None else [Row(r["line"], r["data"], r["file"], r["unit"]) for r in raw]


def _save_first_half(store: Storage, tenant: str, job_id: str, key: str, cleaned: PreparedData) -> None:
    folder = prepared_dir(tenant, job_id)
    store.delete(folder)  # an older key's (a request validated again after a change of code)
    doc = {
        "key": key,
        "train": _rows_json(cleaned.train),
        "validation": _rows_json(cleaned.validation),
        "report": cleaned.report,
        "notes": cleaned.notes,
    }
    store.write_bytes(f"{folder}/{key}.json", json.dumps(doc, ensure_ascii=False).encode())


def _load_first_half(store: Storage, tenant: str, job_id: str, key: str, work: Path) -> PreparedData | None:
    """The saved first half under this exact key, or None; the store's copy is deleted either way (read once: a
    later attempt runs the first half again, with the same rows; another key's is stale)."""
    folder = prepared_dir(tenant, job_id)
    doc = None
    if store.exists(f"{folder}/{key}.json"):
        doc = json.loads(store.download(f"{folder}/{key}.json", work / "data" / "prepared.json").read_text("utf-8"))
    store.delete(folder)
    if doc is None or doc.get("key") != key:
        return None
    return PreparedData(_rows(doc["train"]) or [], _rows(doc["validation"]), doc["report"], notes=doc["notes"])


def discard_first_half(store: Storage, tenant: str, job_id: str) -> None:
    """Delete a saved first half no training run will read (the job failed or was cancelled in validation)."""
    store.delete(prepared_dir(tenant, job_id))


def split_jsonl(rows: list[Row]) -> str:
    """Rows as JSONL (the split artifacts), each with the line it came from."""
    return "".join(json.dumps({"line": r.line, **r.data}, ensure_ascii=False) + "\n" for r in rows)


def write_report(out: Path, prepared: PreparedData) -> list[str]:
    """`data_report.json` and, when the split was made here, `split/train.jsonl` + `split/validation.jsonl`."""
    (out / "split").mkdir(parents=True, exist_ok=True)
    names = ["data_report.json"]
    (out / "data_report.json").write_text(json.dumps(prepared.report, indent=2, sort_keys=True) + "\n")
    if "split" in prepared.report:
        (out / "split" / "train.jsonl").write_text(split_jsonl(prepared.train))
        (out / "split" / "validation.jsonl").write_text(split_jsonl(prepared.validation or []))
        names += ["split/train.jsonl", "split/validation.jsonl"]
    else:
        (out / "split").rmdir()
    return names


def step_messages(report: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """One event per step: `data: dedup_exact: 5574 -> 5171 rows`."""
    return [(f"data: {s['step']}: {s['rows_in']} -> {s['rows_out']} rows", s) for s in report.get("steps", [])]


def token_report(examples: Sequence[dict[str, Any]], max_seq_length: int) -> dict[str, Any]:
    """Token lengths of tokenized examples: quantiles, a power-of-two histogram, how many hit max_seq_length."""
    lengths = sorted(len(e["input_ids"]) for e in examples)
    if not lengths:
        return {"examples": 0}
    histogram: Counter[str] = Counter()
    for n in lengths:
        bucket = 8
        while bucket < n:
            bucket *= 2
        histogram[f"<={min(bucket, max_seq_length)}"] += 1
    return {
        "examples": len(lengths),
        "min": lengths[0],
        "median": lengths[len(lengths) // 2],
        "p95": lengths[min(len(lengths) - 1, -(-95 * len(lengths) // 100) - 1)],
        "max": lengths[-1],
        "max_seq_length": max_seq_length,
        "truncated": sum(n >= max_seq_length for n in lengths),  # at the limit: cut (or exactly as long)
        "histogram": dict(histogram),
    }
