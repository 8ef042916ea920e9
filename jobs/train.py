"""One attempt of one fine-tuning job, top to bottom: the function RQ runs in its forked work horse.

    run(payload) -> claim the job (queued -> running) -> resolve the base model -> fetch the data
    -> tokenizer + datasets -> model + method -> baseline evaluation -> train -> final evaluation
    -> artifacts -> succeeded (or failed / cancelled, with a JobError naming what went wrong).

Everything the user sees goes through `jobs.report.Reporter`. A job failure never raises out of `run`
(RQ records the RQ job as finished; the ftjobs record holds the failure); tracebacks go to the worker's
stderr only, never into the record or its events.
"""

from __future__ import annotations

import logging
import os
import socket
import tempfile
import time
import traceback
import warnings
from pathlib import Path
from typing import Any

import torch
from redis import Redis
from rq import get_current_job
from rq.timeouts import JobTimeoutException
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PrinterCallback,
    TrainingArguments,
    set_seed,
)
from transformers.utils import logging as hf_logging

from client.keys import file_path, job_record_path
from client.models import (
    Artifact,
    Hyperparameters,
    JobCreate,
    JobError,
    JobStatus,
    QueuePayload,
    Task,
    resolve_hyperparameters,
)
from jobs import artifacts
from jobs.data import Datasets, Row, build_datasets, read_jsonl, steps_per_epoch
from jobs.errors import DataError, InvalidModel, JobFailed, ModelNotFound
from jobs.evaluate import classification_compute_metrics, summary
from jobs.methods import apply_method, parameter_counts
from jobs.report import Heartbeat, Reporter
from jobs.storage import Store
from jobs.trainer import Cancelled, JobTrainer, PadCollator, ReportCallback
from jobs.worker import WorkerSettings

log = logging.getLogger("ftjobs.train")
LOG_POINTS = 50  # train-loss points per run: enough for a curve, few enough for the stream


def run(payload: dict[str, Any]) -> dict[str, Any]:
    """RQ job function: one attempt of one job; returns a small summary, never raises for a job failure."""
    p = QueuePayload.model_validate(payload)
    settings = WorkerSettings.from_env()
    redis = Redis.from_url(settings.redis_url)
    try:
        return _attempt(p, settings, redis)
    finally:
        redis.close()


def _attempt(p: QueuePayload, settings: WorkerSettings, redis: Redis) -> dict[str, Any]:
    summary: dict[str, Any] = {"job_id": p.job_id, "tenant": p.tenant, "attempt": p.attempt}
    reporter = Reporter(redis, p.tenant, p.job_id, p.attempt)
    record = reporter.read()
    if record is None:
        return {**summary, "status": "missing"}
    rq_job = get_current_job()
    worker_name = (rq_job.worker_name if rq_job else None) or f"{socket.gethostname()}.{os.getpid()}"
    if not reporter.start(worker_name, queue=rq_job.origin if rq_job else None):
        return {**summary, "status": "skipped"}  # cancelled while queued, or a newer attempt owns the job

    store = Store(settings.storage_url)
    status, error, outputs = JobStatus.failed, None, None
    results: dict[str, Any] = {}
    with Heartbeat(reporter, settings.heartbeat_s), tempfile.TemporaryDirectory(prefix="ftjobs-") as tmp:
        try:
            status, results, outputs = train_job(record, settings, store, reporter, Path(tmp))
        except Cancelled:
            status = JobStatus.cancelled
        except JobFailed as e:
            error = e.to_error()
        except (torch.OutOfMemoryError, MemoryError) as e:
            advice = "try a smaller batch_size or max_seq_length, or LoRA"
            error = JobError(code="out_of_memory", message=f"{type(e).__name__}: {_short(e)}; {advice}")
        except JobTimeoutException as e:  # RQ's limit for one attempt (FTJOBS_JOB_TIMEOUT_S)
            error = JobError(code="timeout", message=_short(e))
        # Our fault or the environment's: the record gets one line, the worker's stderr the traceback.
        except Exception as e:
            traceback.print_exc()
            error = JobError(code="internal_error", message=f"{type(e).__name__}: {_short(e)}")
    if error is not None:
        status = JobStatus.failed
    if reporter.finish(status, error=error, results=results, artifacts=outputs):
        _save_record(store, reporter)
    return {**summary, "status": status.value, "error": error.code if error else None}


def train_job(
    record: dict[str, Any], settings: WorkerSettings, store: Store, reporter: Reporter, work: Path
) -> tuple[JobStatus, dict[str, Any], list[Artifact] | None]:
    """The story of one job; returns (status, results, artifacts)."""
    request = JobCreate.model_validate(record["request"])
    tenant, job_id = record["tenant"], record["id"]
    hp = _hyperparameters(request, record.get("resolved") or {})
    causal = request.task == Task.causal_lm
    hf_logging.disable_progress_bar()  # progress goes to the job record, not to tqdm bars in the worker log
    # peft still calls this transformers 5 deprecation on every model it wraps: noise in the worker log.
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)

    # 1. The base model: a local folder under a configured root (no hub here).
    model_path = resolve_model_path(request.model, settings.model_roots)

    # 2. Data: fetch the uploaded files from the store, validate, split, tokenize.
    train_rows = _fetch_rows(store, tenant, request.training_file, "training_file", work)
    validation_rows = (
        _fetch_rows(store, tenant, request.validation_file, "validation_file", work)
        if request.validation_file
        else None
    )
    tokenizer = _load(AutoTokenizer.from_pretrained, model_path)
    data: Datasets = build_datasets(
        request.task, tokenizer, train_rows, validation_rows, hp.max_seq_length, hp.validation_split, hp.seed
    )
    for note in data.notes:
        reporter.event(note)
    n_val = len(data.validation) if data.validation else 0
    reporter.event(
        f"data: {len(data.train)} training and {n_val} validation examples, "
        f"{data.train.num_tokens()} training tokens per epoch"
    )

    # 3. Model + method. The seed fixes the fresh weights (classifier head, LoRA A matrices).
    set_seed(hp.seed)
    model = _load_model(model_path, request.task, data.labels)
    if tokenizer.pad_token_id is None:  # decoder tokenizers often lack one; padding is masked anyway
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    model.config.pad_token_id = pad_id
    model = apply_method(model, request.method, request.task)
    trainable, total = parameter_counts(model)
    reporter.event(
        f"{request.method.type}: training {trainable:,} of {total:,} parameters "
        f"({100 * trainable / max(total, 1):.2f}%)"
    )

    # 4. The schedule: optimizer steps, how often to log and evaluate.
    total_steps = hp.max_steps or hp.n_epochs * steps_per_epoch(
        len(data.train), hp.batch_size, hp.gradient_accumulation_steps
    )
    logging_steps = max(1, total_steps // LOG_POINTS)
    eval_strategy = "no" if data.validation is None else ("steps" if hp.eval_steps else "epoch")
    bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()  # fp32 weights, bf16 matmuls
    reporter.resolved(
        {
            **hp.model_dump(),
            "model": request.model,
            "model_path": str(model_path),
            "total_steps": total_steps,
            "logging_steps": logging_steps,
            "eval_strategy": eval_strategy,
            "n_train": len(data.train),
            "n_validation": n_val,
            "labels": data.labels,
            "trainable_parameters": trainable,
            "device": "cuda" if torch.cuda.is_available() else "cpu",
            "precision": "bf16" if bf16 else "fp32",
        }
    )
    args = TrainingArguments(
        output_dir=str(work / "trainer"),  # scratch only: nothing is saved there (save_strategy="no")
        report_to="none",
        per_device_train_batch_size=hp.batch_size,
        per_device_eval_batch_size=hp.batch_size,
        gradient_accumulation_steps=hp.gradient_accumulation_steps,
        num_train_epochs=hp.n_epochs,
        max_steps=hp.max_steps or -1,
        learning_rate=float(hp.learning_rate),
        weight_decay=hp.weight_decay,
        warmup_steps=hp.warmup_ratio,  # a float in [0, 1) is a fraction of the total steps
        seed=hp.seed,
        data_seed=hp.seed,
        logging_strategy="steps",
        logging_steps=logging_steps,
        eval_strategy=eval_strategy,
        eval_steps=hp.eval_steps,
        save_strategy="no",
        prediction_loss_only=causal,  # a causal LM's eval needs the loss, not vocabulary-sized logits
        label_names=["labels"],  # a PeftModel hides the forward signature the Trainer would read them from
        include_num_input_tokens_seen="non_padding",
        remove_unused_columns=False,
        disable_tqdm=True,
        bf16=bf16,
        dataloader_num_workers=0,  # no forks inside the work horse
        dataloader_pin_memory=torch.cuda.is_available(),
    )
    callback = ReportCallback(reporter, settings.heartbeat_s, causal)
    trainer = JobTrainer(
        model=model,
        args=args,
        train_dataset=data.train,
        eval_dataset=data.validation,
        processing_class=tokenizer,
        data_collator=PadCollator(pad_id, 8 if torch.cuda.is_available() else None),
        compute_metrics=None if causal else classification_compute_metrics(data.labels or []),
        callbacks=[callback],
    )
    trainer.remove_callback(PrinterCallback)  # the callback reports to the job; the worker log stays quiet

    # 5. Baseline: the untrained model on the validation set (metric points at step 0).
    results: dict[str, Any] = {}
    if data.validation is not None:
        trainer.evaluate()
        results["baseline"] = summary(callback.eval_history[-1]["values"])

    # 6. Train; the callback reports progress and stops at a cancel request.
    started = time.monotonic()
    output = trainer.train()
    results.update(
        steps=trainer.state.global_step,
        train_seconds=round(time.monotonic() - started, 3),
        tokens_seen=int(trainer.state.num_input_tokens_seen or 0),
        train_loss=float(output.training_loss),
    )
    if callback.train_losses:
        results["train_loss_first"], results["train_loss_last"] = (
            callback.train_losses[0],
            callback.train_losses[-1],
        )
    if callback.cancelled:
        reporter.event(f"cancelled at step {trainer.state.global_step}; no artifacts are kept")
        return JobStatus.cancelled, results, None

    # 7. Final evaluation (reusing the one the schedule just ran at the last step, if any).
    if data.validation is not None:
        last = callback.eval_history[-1]
        if last["step"] != trainer.state.global_step or len(callback.eval_history) == 1:
            trainer.evaluate()
            last = callback.eval_history[-1]
        results["final"] = summary(last["values"])

    # 8. Artifacts: write locally, upload to staging, move into place; then the record can list them.
    reporter.event("saving artifacts")
    manifest_job = {
        "job_id": job_id,
        "tenant": tenant,
        "attempt": reporter.attempt,
        "model": request.model,
        "task": request.task,
        "method": request.method.type,
    }
    metrics = {**results, "history": {"train": callback.train_history, "eval": callback.eval_history}}
    written = artifacts.write_artifacts(
        work / "out",
        model=trainer.model,
        tokenizer=tokenizer,
        method=request.method,
        task=request.task,
        labels=data.labels,
        metrics=metrics,
        job=manifest_job,
    )
    published = artifacts.publish(
        store,
        work / "out",
        written,
        tenant,
        job_id,
        reporter.attempt,
        lambda: not reporter.cancel_requested(),
    )
    if published is None:
        return JobStatus.cancelled, results, None
    megabytes = sum(a.bytes for a in published) / 1e6
    reporter.event(f"{len(published)} artifacts saved ({megabytes:.3g} MB)")
    return JobStatus.succeeded, results, published


# ----------------------------------------------------------------------------- steps of the story


def resolve_model_path(model: str, roots: tuple[Path, ...]) -> Path:
    """An absolute path inside a model root, or a path relative to the first root that has it."""
    requested = Path(model).expanduser()
    if requested.is_absolute():
        candidates = [requested]
    else:
        candidates = [root / requested for root in roots]
    for candidate in candidates:
        path = candidate.resolve()
        inside = any(path.is_relative_to(root.resolve()) for root in roots)
        if inside and (path / "config.json").is_file():
            return path
    raise ModelNotFound(
        f"no model (a folder with config.json) at {model!r} under the configured model roots", param="model"
    )


def _hyperparameters(request: JobCreate, resolved: dict[str, Any]) -> Hyperparameters:
    """What the API resolved wins; anything missing is resolved here the same way."""
    hp = resolve_hyperparameters(request)
    hp.update({k: v for k, v in resolved.items() if k in hp and v is not None and v != "auto"})
    return Hyperparameters.model_validate(hp)


def _fetch_rows(store: Store, tenant: str, file_id: str, name: str, work: Path) -> list[Row]:
    rel = file_path(tenant, file_id)
    if not store.exists(rel):
        raise DataError(f"{name} {file_id} is not in the store", param=name)
    return read_jsonl(store.download(rel, work / "data" / f"{file_id}.jsonl"), name)


def _load(loader: Any, path: Path, **kwargs: Any) -> Any:
    try:
        return loader(str(path), **kwargs)
    except (OSError, ValueError, KeyError) as e:
        raise InvalidModel(
            f"could not load {path.name}: {type(e).__name__}: {_short(e)}", param="model"
        ) from None


def _load_model(path: Path, task: Task, labels: list[str] | None) -> Any:
    if task == Task.classification:
        assert labels is not None
        return _load(
            AutoModelForSequenceClassification.from_pretrained,
            path,
            num_labels=len(labels),
            id2label=dict(enumerate(labels)),
            label2id={name: i for i, name in enumerate(labels)},
            ignore_mismatched_sizes=True,  # a base that already has a head for other labels gets a fresh one
            dtype=torch.float32,  # fp32 master weights; bf16 autocast on GPUs that have it
        )
    return _load(AutoModelForCausalLM.from_pretrained, path, dtype=torch.float32)


def _save_record(store: Store, reporter: Reporter) -> None:
    """The final record also goes to the store: a lost Redis does not lose a finished job's results."""
    try:
        record = reporter.read()
        if record is not None:
            store.write_json(job_record_path(reporter.tenant, reporter.job_id), record)
    except Exception:
        log.exception("could not write the final job record to the store")


def _short(e: BaseException, limit: int = 300) -> str:
    text = " ".join(str(e).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
