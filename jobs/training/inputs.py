"""What a job trains from: the base model's folder, the parent job, the prepared data and the reference data."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import AutoTokenizer

from ftjobs.client.models import Hyperparameters, JobCreate, Task
from ftjobs.core.base_models import shown_model
from ftjobs.core.storage import Storage
from ftjobs.jobs.data.examples import Datasets, build_datasets
from ftjobs.jobs.data.inputs import fetch_rows, load, resolve_model_path
from ftjobs.jobs.data.prepare import (
    MODEL_AUGMENT,
    PreparedData,
    prepare_job_data,
    step_messages,
    token_report,
    write_report,
)
from ftjobs.jobs.report import Reporter
from ftjobs.jobs.training import continuation, safeguards
from ftjobs.jobs.training.continuation import Parent


@dataclass
class Reference:
    """What the model must not forget: measured before/after, optionally replayed and anchored with EWC."""

    examples: list[dict[str, Any]] | None = None  # tokenized like the training data
    source: str = "reference_file"  # where they came from, as events and the resolved record say it
    replayed: int = 0  # reference examples mixed into the training data (inside n_train)


@dataclass
class Inputs:
    """What a job trains from: the request, the base model's folder, the parent job, the data, the reference."""

    request: JobCreate
    hp: Hyperparameters
    model_path: Path
    parent: Parent | None
    prepared: PreparedData
    tokenizer: Any
    data: Datasets
    reference: Reference
    model_name: str = ""  # the base model as the tenant may see it (core/base_models.shown_model): never a server path


def load_inputs(
    request: JobCreate,
    hp: Hyperparameters,
    model_roots: tuple[Path, ...],
    store: Storage,
    reporter: Reporter,
    work: Path,
) -> Inputs:
    """Resolve the base model, fetch the parent's weights, fetch + prepare + tokenize the data, load the reference."""
    tenant = reporter.tenant
    model_path = resolve_model_path(request.model, model_roots)  # a local folder under a configured root: no hub
    parent = None
    if request.parent_job_id:  # continue from a finished job's weights (jobs/training/continuation.py)
        parent = continuation.fetch_parent(store, tenant, request, work)
        reporter.event(f"continuing from {parent.job_id}")

    # Fetch, clean, dedup, split, augment and balance as `request.data` asks (nothing, by default); the first
    # half (up to the split) is the one the job's validation saved, when it still matches the request.
    prepared = prepare_job_data(store, tenant, reporter.job_id, request, hp, work, model_roots)
    # The job's validation (jobs/validate.py) reported the steps, notes and token checks; only what it left to
    # this run (model-based augmentation and the steps after it) is news here.
    messages = step_messages(prepared.report)
    first_new = next((i for i, (_, step) in enumerate(messages) if step["step"] in MODEL_AUGMENT), len(messages))
    for message, step in messages[first_new:]:
        reporter.event(message, data=step)
    tokenizer = load(AutoTokenizer.from_pretrained, model_path)
    if parent and parent.labels is not None:
        continuation.check_labels(parent, prepared.train + (prepared.validation or []))
    data = build_datasets(
        request.task,
        tokenizer,
        prepared.train,
        prepared.validation,
        hp.max_seq_length,
        hp.validation_split,
        hp.seed,
        train_on_inputs=hp.train_on_inputs,
        labels=parent.labels if parent else None,
    )
    if prepared.report:
        prepared.report["tokens"] = token_report(data.train.examples, hp.max_seq_length)
        write_report(work / "out", prepared)  # data_report.json (+ the split): picked up with the other artifacts
    reference = _reference(request, hp, parent, data, tokenizer, store, reporter, work)
    n_val = len(data.validation) if data.validation else 0
    reporter.event(
        f"data: {len(data.train)} training and {n_val} validation examples, "
        f"{data.train.num_tokens()} training tokens per epoch"
    )
    shown = shown_model(request.model, model_roots)
    return Inputs(request, hp, model_path, parent, prepared, tokenizer, data, reference, shown)


def _reference(
    request: JobCreate,
    hp: Hyperparameters,
    parent: Parent | None,
    data: Datasets,
    tokenizer: Any,
    store: Storage,
    reporter: Reporter,
    work: Path,
) -> Reference:
    """The reference_file, or (a continued job's default) what its parent trained on; replayed if asked."""
    reference = Reference()
    rows = None
    if request.reference_file:
        rows = fetch_rows(store, reporter.tenant, request.reference_file, "reference_file", work)
    # a DPO parent's pairs are no language-modelling data; an evaluation job trains nothing, so forgets nothing
    elif parent is not None and parent.task != Task.dpo and not request.evaluate_only:
        rows = continuation.parent_rows(store, reporter.tenant, parent, hp, work)
        reference.source = f"parent {parent.job_id}'s training data"
    if rows:
        reference.examples = safeguards.reference_examples(
            request.task, rows, tokenizer, hp.max_seq_length, data.labels, hp.train_on_inputs
        )
        if hp.replay_ratio > 0:
            data.train.examples, reference.replayed = safeguards.replay_mix(
                data.train.examples, reference.examples, hp.replay_ratio, hp.seed
            )
            reporter.event(
                f"replay: mixed {reference.replayed} examples of the {reference.source} into the training data"
            )
        reporter.event(f"forgetting: measured on {len(reference.examples)} examples of the {reference.source}")
    return reference
