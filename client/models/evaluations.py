"""Evaluation jobs (`POST /v1/evaluations`): a model scored on a file without training, as an ordinary job."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, Field

from ftjobs.client.models.common import FILE_ID_PATTERN, JOB_ID_PATTERN, STRICT
from ftjobs.client.models.jobs import Task
from ftjobs.client.models.training import EvalGeneration


class EvaluationCreate(BaseModel):
    """Body of `POST /v1/evaluations`: what to evaluate (a finished job's weights, one of its checkpoints, or a
    base model) on which file. The answer is a `Job` with `evaluate_only` set: it is validated, queued, run,
    listed, followed and cancelled like any job; its results.final, metrics.json and eval_samples.jsonl are those
    of a training job's final evaluation."""

    model_config = STRICT
    file: str = Field(pattern=FILE_ID_PATTERN, description="Id of the uploaded file to evaluate on.")
    job_id: str | None = Field(
        default=None,
        pattern=JOB_ID_PATTERN,
        description="A succeeded job whose weights to evaluate (its base model, task, method, labels and "
        "evaluation settings come along). Without it, `model` is evaluated as it is.",
    )
    checkpoint_step: int | None = Field(
        default=None, ge=1, description="With job_id: the weights that job kept at this step (an epoch's checkpoint)."
    )
    model: str | None = Field(
        default=None,
        min_length=1,
        max_length=1024,
        description="Without job_id: the base model to evaluate (a path under a configured model root).",
    )
    task: Task | None = Field(default=None, description="Without job_id: the task (default causal_lm).")
    group_field: str | None = Field(
        default=None,
        min_length=1,
        max_length=64,
        description="classification: accuracy and F1 per group of this row key (default: the job's group_field).",
    )
    eval_samples: int | None = Field(
        default=None, ge=0, le=100, description="Examples saved with their predictions (default: the job's, or 8)."
    )
    eval_generation_limit: int | None = Field(
        default=None,
        ge=0,
        le=10_000,
        description="causal_lm/seq2seq: examples to generate for and score with BLEU/ROUGE (default: the job's).",
    )
    eval_generation: EvalGeneration | None = Field(
        default=None, description="How the generation evaluation decodes (default: the job's)."
    )
    metadata: dict[Annotated[str, Field(max_length=64)], Annotated[str, Field(max_length=512)]] = Field(
        default_factory=dict, max_length=16, description="Free key/value pairs kept on the job."
    )
