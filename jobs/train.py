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
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    EarlyStoppingCallback,
    PrinterCallback,
    TrainingArguments,
    set_seed,
)
from transformers.utils import logging as hf_logging

from client.keys import file_path, job_record_path
from client.models import (
    Artifact,
    EventLevel,
    Hyperparameters,
    JobCreate,
    JobError,
    JobStatus,
    QueuePayload,
    Task,
    auto_reasons,
    resolve_hyperparameters,
)
from jobs import artifacts, continuation, integrations, report_files, safeguards
from jobs.data import Datasets, Row, build_datasets, read_jsonl, steps_per_epoch
from jobs.errors import DataError, InvalidModel, JobFailed, ModelNotFound
from jobs.evaluate import classification_compute_metrics, summary
from jobs.generation import Evaluator
from jobs.methods import apply_method, load_options, parameter_counts
from jobs.prepare import prepare_data, step_messages, token_report, write_report
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
    causal = request.task != Task.classification  # a language-model loss (causal_lm, seq2seq): perplexity
    integrations.check(request.integrations)  # before any work: a missing tracker fails fast
    hf_logging.disable_progress_bar()  # progress goes to the job record, not to tqdm bars in the worker log
    # peft still calls this transformers 5 deprecation on every model it wraps: noise in the worker log.
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)

    # 1. The base model: a local folder under a configured root (no hub here).
    model_path = resolve_model_path(request.model, settings.model_roots)
    parent = None
    if request.parent_job_id:  # continue from a finished job's weights (jobs/continuation.py)
        parent = continuation.fetch_parent(store, tenant, request, work)
        reporter.event(f"continuing from {parent.job_id}")

    # 2. Data: fetch the uploaded files from the store, validate, split, tokenize.
    train_rows = _fetch_rows(store, tenant, request.training_file, "training_file", work)
    validation_rows = (
        _fetch_rows(store, tenant, request.validation_file, "validation_file", work)
        if request.validation_file
        else None
    )
    # Clean, dedup, split, augment and balance as `request.data` asks (nothing, by default); reported step by step.
    prepared = prepare_data(
        request.task, request.data, train_rows, validation_rows, hp.validation_split, hp.seed, settings.model_roots
    )
    train_rows, validation_rows = prepared.train, prepared.validation
    for note in prepared.notes:
        reporter.event(note)
    for message, step in step_messages(prepared.report):
        reporter.event(message, data=step)
    tokenizer = _load(AutoTokenizer.from_pretrained, model_path)
    if parent and parent.labels is not None:
        continuation.check_labels(parent, train_rows + (validation_rows or []))
    data: Datasets = build_datasets(
        request.task,
        tokenizer,
        train_rows,
        validation_rows,
        hp.max_seq_length,
        hp.validation_split,
        hp.seed,
        train_on_inputs=hp.train_on_inputs,
        labels=parent.labels if parent else None,
    )
    for note in data.notes:
        reporter.event(note)
    tokens = token_report(data.train.examples, hp.max_seq_length)
    if tokens.get("truncated"):
        reporter.event(
            f"{tokens['truncated']} of {tokens['examples']} training examples reach max_seq_length="
            f"{hp.max_seq_length} and are truncated",
            level=EventLevel.warning,
            data=tokens,
        )
    if prepared.report:
        prepared.report["tokens"] = tokens
        write_report(work / "out", prepared)  # data_report.json (+ the split): picked up with the other artifacts
    # What the model must not forget: measured before/after, optionally replayed and anchored with EWC.
    reference, replayed = None, 0
    if request.reference_file:
        reference = safeguards.reference_examples(
            request.task,
            _fetch_rows(store, tenant, request.reference_file, "reference_file", work),
            tokenizer,
            hp.max_seq_length,
            data.labels,
            hp.train_on_inputs,
        )
        if hp.replay_ratio > 0:
            data.train.examples, replayed = safeguards.replay_mix(
                data.train.examples, reference, hp.replay_ratio, hp.seed
            )
            reporter.event(f"replay: mixed {replayed} reference_file examples into the training data")
    n_val = len(data.validation) if data.validation else 0
    reporter.event(
        f"data: {len(data.train)} training and {n_val} validation examples, "
        f"{data.train.num_tokens()} training tokens per epoch"
    )

    # 3. Model + method. The seed fixes the fresh weights (classifier head, LoRA A matrices).
    set_seed(hp.seed)
    dropout = safeguards.dropout_overrides(
        _load(AutoConfig.from_pretrained, model_path), hp.hidden_dropout, hp.attention_dropout
    )
    full_parent = parent is not None and request.method.type == "full"  # full: the parent's model/ is the start
    model = _load_model(
        parent.weights if parent and full_parent else model_path,
        request.task,
        data.labels,
        **dropout,
        **load_options(request.method),
    )
    if tokenizer.pad_token_id is None:  # decoder tokenizers often lack one; padding is masked anyway
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    model.config.pad_token_id = pad_id
    if parent and not full_parent:
        model = continuation.attach(model, request.method, parent)
    else:
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
    stopping: dict[str, Any] = {}  # early stopping: keep the best checkpoint (scratch) and reload it at the end
    if hp.early_stopping is not None:
        if data.validation is None:
            raise safeguards.InvalidRequest(
                "early_stopping needs validation data, and none was held out (too few rows?)",
                param="hyperparameters.early_stopping",
            )
        stopping = safeguards.early_stopping_args(hp.early_stopping, request.task)
    report_to = integrations.report_to(request.integrations, work / "out")
    reporter.resolved(
        {
            **hp.model_dump(),
            "model": request.model,
            "model_path": str(model_path),
            "parent_job_id": request.parent_job_id,
            "total_steps": total_steps,
            "logging_steps": logging_steps,
            "eval_strategy": eval_strategy,
            "n_train": len(data.train),
            "n_validation": n_val,
            "labels": data.labels,
            "trainable_parameters": trainable,
            "device": "cuda" if torch.cuda.is_available() else "cpu",
            "precision": "bf16" if bf16 else "fp32",
            "eval_generation_limit": request.eval_generation_limit,
            "eval_samples": request.eval_samples,
            "report_to": report_to,
            "dropout_overrides": dropout,
            "metric_for_best_model": stopping.get("metric_for_best_model"),
            "greater_is_better": stopping.get("greater_is_better"),
            "auto_reasons": auto_reasons(request),
            "n_reference": len(reference) if reference else 0,
            "n_replayed": replayed,  # reference examples inside n_train
        }
    )
    args = TrainingArguments(
        output_dir=str(work / "trainer"),  # scratch only: nothing is saved there (save_strategy="no")
        report_to=report_to or "none",
        per_device_train_batch_size=hp.batch_size,
        per_device_eval_batch_size=hp.batch_size,
        gradient_accumulation_steps=hp.gradient_accumulation_steps,
        num_train_epochs=hp.n_epochs,
        max_steps=hp.max_steps or -1,
        learning_rate=float(hp.learning_rate),
        weight_decay=hp.weight_decay,
        warmup_steps=hp.warmup_ratio,  # a float in [0, 1) is a fraction of the total steps
        lr_scheduler_type=hp.lr_scheduler,
        max_grad_norm=hp.max_grad_norm,  # 0: no clipping
        seed=hp.seed,
        data_seed=hp.seed,
        logging_strategy="steps",
        logging_steps=logging_steps,
        eval_strategy=eval_strategy,
        eval_steps=hp.eval_steps,
        save_strategy=eval_strategy if stopping else "no",
        save_steps=hp.eval_steps or 500,  # early stopping saves where it evaluates; otherwise unused
        **stopping,
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
    keeper = None if causal else safeguards.PredictionKeeper(classification_compute_metrics(data.labels or []))
    callbacks: list[Any] = [callback]
    if hp.early_stopping is not None:
        callbacks.append(EarlyStoppingCallback(hp.early_stopping.patience, hp.early_stopping.min_delta))
    trainer = JobTrainer(
        model=model,
        args=args,
        train_dataset=data.train,
        eval_dataset=data.validation,
        processing_class=tokenizer,
        data_collator=PadCollator(pad_id, 8 if torch.cuda.is_available() else None),
        compute_metrics=keeper,
        callbacks=callbacks,
    )
    trainer.remove_callback(PrinterCallback)  # the callback reports to the job; the worker log stays quiet
    reference_batches, reference_before = safeguards.attach_penalties(trainer, hp.l1_lambda, hp.ewc_lambda, reference)

    if prepared.class_weights and data.labels:
        trainer.class_weights = torch.tensor([prepared.class_weights.get(name, 1.0) for name in data.labels])

    # 5. Baseline: the untrained model on the validation set (metric points at step 0).
    results: dict[str, Any] = {}
    if prepared.report:
        results["data"] = prepared.report
    # What the model says (greedy generations scored with BLEU/ROUGE, or predicted labels), not just its loss.
    evaluator = Evaluator(
        request.task,
        tokenizer,
        data.validation_rows,
        limit=request.eval_generation_limit,
        samples=request.eval_samples,
        max_seq_length=hp.max_seq_length,
        labels=data.labels,
        should_stop=reporter.cancel_requested,
    )
    if data.validation is not None:
        trainer.evaluate()
        results["baseline"] = summary(callback.eval_history[-1]["values"])
        baseline_predictions = keeper.last if keeper else None
        results["baseline"].update(_generation_eval(evaluator, trainer, reporter, "baseline"))

    # 6. Train; the callback reports progress and stops at a cancel request.
    started = time.monotonic()
    output = trainer.train()
    trained_evals = list(callback.eval_history)
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
        # after early stopping the best weights were reloaded: evaluate them, not the last ones
        if stopping or last["step"] != trainer.state.global_step or len(callback.eval_history) == 1:
            trainer.evaluate()
            last = callback.eval_history[-1]
        results["final"] = summary(last["values"])
        results["final"].update(_generation_eval(evaluator, trainer, reporter, "final"))
        if keeper and keeper.last and baseline_predictions:
            results.update(_bias_report(data, request.group_field, baseline_predictions, keeper.last))
    if stopping:
        results["early_stopping"] = {
            "metric": stopping["metric_for_best_model"],
            "best_metric": trainer.state.best_metric,
            "best_step": _checkpoint_step(trainer.state.best_model_checkpoint),
            "stopped_at_step": trainer.state.global_step,
            "stopped_early": trainer.state.global_step < total_steps,
        }
    if reference_before is not None:
        results["forgetting"] = safeguards.forgetting(
            reference_before, safeguards.mean_loss(trainer.model, reference_batches)
        )
    results["diagnostics"] = safeguards.diagnose(  # the curves of the run, not the re-evaluation of kept weights
        callback.train_history, trained_evals, (results.get("early_stopping") or {}).get("best_step")
    )
    for flag in results["diagnostics"]:
        reporter.event(f"{flag['flag']}: {flag['message']}", level=EventLevel.warning)

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
    report_files.write_eval_samples(work / "out", evaluator.sample_rows())
    report_files.write_loss_curve(work / "out", metrics["history"])
    report_files.write_model_card(
        work / "out",
        job={**manifest_job, "suffix": request.suffix},
        data={
            "training_file": request.training_file,
            "validation_file": request.validation_file,
            "n_train": len(data.train),
            "n_validation": n_val,
        },
        hyperparameters={
            **hp.model_dump(),
            "total_steps": total_steps,
            **{f"method.{k}": v for k, v in request.method.model_dump().items()},
        },
        results=results,
        weights_dir="model" if request.method.type == "full" else "adapter",
    )
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


def _generation_eval(evaluator: Evaluator, trainer: Any, reporter: Reporter, stage: str) -> dict[str, float]:
    """Run the generation pass; its metrics also become an eval metric point at the current step."""
    if not evaluator.active:
        return {}
    values = evaluator.run(trainer.model, stage, Cancelled)
    if values:
        step = trainer.state.global_step
        reporter.metric("eval", step, round(trainer.state.epoch or 0.0, 4), values)
        shown = ", ".join(f"{k}={v:.4g}" for k, v in values.items())
        reporter.event(f"{stage} generation ({len(evaluator.items[: evaluator.limit])} examples): {shown}")
    return values


def _bias_report(
    data: Datasets, group_field: str | None, before: tuple[list[int], list[int]], after: tuple[list[int], list[int]]
) -> dict[str, Any]:
    """Confusion matrices (and per-group metrics) of the validation set before and after training."""
    n = len(data.labels or [])
    out: dict[str, Any] = {
        "confusion_matrix": {
            "labels": data.labels,
            "baseline": safeguards.confusion(*before, n),
            "final": safeguards.confusion(*after, n),
        }
    }
    groups = safeguards.row_groups(data.validation_rows, group_field) if group_field else []
    if groups and len(groups) == len(after[0]):  # one group per validation example, in order
        out["groups"] = {
            "field": group_field,
            "baseline": safeguards.group_metrics(*before, groups, n),
            "final": safeguards.group_metrics(*after, groups, n),
        }
    return out


def _checkpoint_step(path: str | None) -> int | None:
    """The step of a Trainer checkpoint folder (`.../checkpoint-120`)."""
    return int(path.rsplit("-", 1)[1]) if path and path.rsplit("-", 1)[-1].isdigit() else None


def _load_model(path: Path, task: Task, labels: list[str] | None, **overrides: Any) -> Any:
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
            **overrides,  # config attributes, e.g. dropout probabilities
        )
    if task == Task.seq2seq:
        return _load(AutoModelForSeq2SeqLM.from_pretrained, path, dtype=torch.float32, **overrides)
    return _load(AutoModelForCausalLM.from_pretrained, path, dtype=torch.float32, **overrides)


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
