"""Evaluation jobs: `POST /v1/evaluations` scores a finished job's weights (or one of its checkpoints, or a base model)
on a file without training. It makes an ordinary job (`evaluate_only`; jobs/evaluate_job.py) through the same path
as `POST /v1/jobs`: checked, validated by a worker, queued, run, listed, followed and cancelled like any job."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Response
from pydantic import ValidationError as RequestInvalid

from ftjobs.client.models import Job, JobCreate, JobStatus, Task
from ftjobs.client.models.evaluations import EvaluationCreate
from ftjobs.core import keys
from ftjobs.service.deps import LimitsDep, QueueDep, SettingsDep, StoreDep, TenantDep
from ftjobs.service.errors import (
    CheckpointNotFound,
    FileNotFound,
    IdempotencyKeyInProgress,
    IdempotencyKeyReused,
    IncompatibleFile,
    IncompatibleParentJob,
    JobLimitExceeded,
    JobNotFound,
    MalformedBody,
    ModelNotAllowed,
    ParentJobNotSucceeded,
    QuotaExceeded,
    RateLimited,
    RequestEntityTooLarge,
    ValidationError,
    error_responses,
)
from ftjobs.service.openai_results import weights_of
from ftjobs.service.routes import jobs
from ftjobs.service.store import Store

router = APIRouter(prefix="/v1/evaluations", tags=["evaluations"])
# An evaluation trains nothing: no safeguards that need reference data, and one planned step, so that no
# max_job_steps limit (checked here and by the worker) counts epochs over the file.
NO_TRAINING = {"ewc_lambda": 0.0, "replay_ratio": 0.0, "l1_lambda": 0.0, "early_stopping": None, "max_steps": 1}


def evaluated_job(store: Store, tenant: str, job_id: str, checkpoint_step: int | None) -> Job:
    """The succeeded job (of this tenant) whose weights an evaluation reads; 4xx naming `job_id` or
    `checkpoint_step` when they are not there."""
    try:
        job = store.get_job(tenant, job_id)
    except JobNotFound:
        raise JobNotFound(f"No job {job_id!r}.", param="job_id") from None
    if job.status != JobStatus.succeeded or job.evaluate_only:
        what = "an evaluation job, which has no weights" if job.evaluate_only else job.status.value
        raise ParentJobNotSucceeded(f"job_id {job.id} is {what}; only a succeeded training job can be evaluated.",
                                    param="job_id")  # fmt: skip
    if store.redis.sismember(keys.deleted_models_key(tenant), job.id):
        raise ParentJobNotSucceeded(f"job_id {job.id}'s fine-tuned model was deleted.", param="job_id")
    if checkpoint_step is not None:
        kept = sorted(w.step for w in weights_of(job) if w.prefix)
        if checkpoint_step not in kept:
            steps = ", ".join(map(str, kept)) or "none"
            raise CheckpointNotFound(
                f"checkpoint_step {checkpoint_step}: job {job.id} kept checkpoints at steps: {steps}.",
                param="checkpoint_step",
            )
    return job


def evaluation_request(store: Store, tenant: str, req: EvaluationCreate) -> JobCreate:
    """The evaluation job's JobCreate: the job's base model, task, method (inherited by check_parent), labels,
    evaluation settings and batch/sequence settings, so its scores are comparable with the job's own."""
    body: dict[str, Any] = {"training_file": req.file, "validation_file": req.file, "evaluate_only": True}
    if req.job_id is not None:
        if req.model is not None or req.task is not None:
            field = "model" if req.model is not None else "task"
            raise ValidationError(f"{field}: with job_id the job's own {field} is evaluated; leave it out.",
                                  param=field)  # fmt: skip
        job = evaluated_job(store, tenant, req.job_id, req.checkpoint_step)
        body.update(
            model=job.model, task=job.task, method={"type": job.method.type}, parent_job_id=job.id,
            checkpoint_step=req.checkpoint_step, group_field=job.group_field,
            hyperparameters=job.hyperparameters.model_copy(update=NO_TRAINING).model_dump(mode="json"),
        )  # fmt: skip
        # the job's own evaluation settings, unless the request names others
        request = store.redis.hget(keys.job_key(tenant, job.id), str(keys.JobField.request))
        body.update({k: v for k, v in json.loads(request or "{}").items() if k.startswith("eval_")})
    else:
        if req.model is None:
            raise ValidationError("model: give a base model to evaluate, or a job_id.", param="model")
        if req.checkpoint_step is not None:
            raise ValidationError("checkpoint_step: a checkpoint is a job's; give its job_id.", param="checkpoint_step")
        # the base model as it is: `full` wraps nothing around it (a classification head starts untrained)
        body.update(model=req.model, task=req.task or Task.causal_lm, method={"type": "full"})
        body["hyperparameters"] = NO_TRAINING
    given = req.model_dump(include={"group_field", "eval_samples", "eval_generation_limit", "eval_generation"},
                           exclude_none=True)  # fmt: skip
    body.update(given, metadata=req.metadata)
    try:
        return JobCreate.model_validate(body)
    except RequestInvalid as e:  # e.g. a group_field for a task other than classification
        error = e.errors()[0]
        field = ".".join(str(part) for part in error["loc"])
        raise ValidationError(f"{field}: {error['msg']}", param=field) from None


@router.post(
    "",
    status_code=201,
    max_body_size=jobs.MAX_JSON_BODY_BYTES,
    responses={
        200: jobs.REPLAYED,
        **error_responses(
            MalformedBody,
            RequestEntityTooLarge,
            FileNotFound,
            IdempotencyKeyReused,
            IdempotencyKeyInProgress,
            ValidationError,
            IncompatibleFile,
            ModelNotAllowed,
            JobNotFound,
            CheckpointNotFound,
            ParentJobNotSucceeded,
            IncompatibleParentJob,
            JobLimitExceeded,
            QuotaExceeded,
            RateLimited,
        ),
    },
)
def create_evaluation(
    req: EvaluationCreate,
    response: Response,
    tenant: TenantDep,
    settings: SettingsDep,
    store: StoreDep,
    queue: QueueDep,
    limits: LimitsDep,
    idempotency_key: jobs.IdempotencyKey = None,
) -> Job:
    """Evaluate a finished job's weights (or one of its checkpoints, or a base model) on a file, without training:
    a job with `evaluate_only`, whose results.final, metrics.json and eval_samples.jsonl are a final evaluation's."""
    try:
        store.get_file(tenant, req.file, param="file")
    except FileNotFound as e:
        raise FileNotFound(e.message, param="file") from None
    request = evaluation_request(store, tenant, req)
    try:
        return jobs.create_job(request, response, tenant, settings, store, queue, limits, idempotency_key)
    except (FileNotFound, IncompatibleFile) as e:  # the checks name the job's fields; the caller gave `file`
        e.param = "file" if e.param in ("training_file", "validation_file") else e.param
        raise
