"""Programmatic labeling (`POST /v1/annotations`): labeling functions (keywords, regular expressions, a local model's
zero-shot guess) voted over the rows of an uploaded file, combined by Snorkel's LabelModel into a new labeled file."""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, field_validator

from ftjobs.client.models.common import FILE_ID_PATTERN, STRICT, ListObject

ANNOTATION_ID_PATTERN = r"^annot-[0-9a-f]{20}$"
FUNCTION_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
FIELD_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$"
MAX_FUNCTIONS = 50
MAX_LABELS = 50
MAX_KEYWORDS = 500
MAX_PATTERN_CHARS = 1000
DEFAULT_ZERO_SHOT_MODEL = "all-MiniLM-L6-v2"

Name = Annotated[str | None, Field(default=None, pattern=FUNCTION_NAME_PATTERN, description="Shown in the stats and "
                                   "each row's provenance (default: `<type>_<label>_<index>`); unique.")]  # fmt: skip
Label = Annotated[str, Field(min_length=1, max_length=200)]


class KeywordsFunction(BaseModel):
    """Votes `label` when the text contains any of the keywords as a whole word (or phrase), else abstains."""

    model_config = STRICT
    type: Literal["keywords"]
    label: Label
    keywords: list[Annotated[str, Field(min_length=1, max_length=200)]] = Field(min_length=1, max_length=MAX_KEYWORDS)
    case_sensitive: bool = False
    name: Name = None

    @field_validator("keywords")
    @classmethod
    def _not_blank(cls, value: list[str]) -> list[str]:
        if any(not k.strip() for k in value):
            raise ValueError("a keyword is blank")
        return value


class RegexFunction(BaseModel):
    """Votes `label` when the regular expression (Python `re`) matches anywhere in the text, else abstains."""

    model_config = STRICT
    type: Literal["regex"]
    label: Label
    pattern: str = Field(min_length=1, max_length=MAX_PATTERN_CHARS)
    case_sensitive: bool = False
    name: Name = None

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            compiled = re.compile(value)
        except (re.error, RecursionError, OverflowError) as e:  # deep nesting: RecursionError
            raise ValueError(f"not a valid regular expression: {e or type(e).__name__}") from None
        if compiled.match(""):
            raise ValueError("the pattern matches the empty string, so it would vote on every row")
        return value


class ZeroShotFunction(BaseModel):
    """A local encoder's guess: each row's embedding (mean-pooled, normalised) against the embeddings of the label
    descriptions; votes the most similar label when it is similar enough and ahead of the next, else abstains."""

    model_config = STRICT
    type: Literal["zero_shot"]
    descriptions: dict[Label, Annotated[str, Field(min_length=1, max_length=2000)]] = Field(
        min_length=2, description="label -> a description of it (e.g. `an advert or a prize offer`); >= 2 labels."
    )
    label: Label | None = Field(default=None, description="Vote only this label (when it wins); default any.")
    model: str = Field(default=DEFAULT_ZERO_SHOT_MODEL, min_length=1, max_length=1000,
                       description="A local encoder under the model roots, as a job's `model`.")  # fmt: skip
    min_similarity: float = Field(default=0.0, ge=-1, le=1, description="Abstain below this cosine similarity.")
    min_margin: float = Field(default=0.0, ge=0, le=2, description="Abstain unless ahead of the next by this much.")
    name: Name = None

    @field_validator("model")
    @classmethod
    def _model_path_shape(cls, value: str) -> str:  # as a job's `model`
        if "\x00" in value or any(part == ".." for part in re.split(r"[\\/]", value)):
            raise ValueError("model must not contain '..' or NUL")
        return value


LabelingFunction = Annotated[KeywordsFunction | RegexFunction | ZeroShotFunction, Field(discriminator="type")]


class AnnotationCreate(BaseModel):
    """Body of `POST /v1/annotations`."""

    model_config = STRICT
    file_id: str = Field(pattern=FILE_ID_PATTERN, description="An uploaded file whose rows are labeled.")
    text_field: str = Field(default="text", pattern=FIELD_PATTERN, description="The rows' text field.")
    label_field: str = Field(default="label", pattern=FIELD_PATTERN, description="Where the label is written.")
    given_field: str | None = Field(
        default=None,
        pattern=FIELD_PATTERN,
        description="Where a row's known label is (default `label_field`): a row holding one of `labels` there keeps "
        "it (source `given`); those rows score the functions and the label model, and set its class balance. An "
        "upload's rows share one shape, so a partly labeled file keeps its known labels in another field.",
    )
    labels: list[Label] = Field(min_length=2, max_length=MAX_LABELS, description="The classes, in order.")
    functions: list[LabelingFunction] = Field(min_length=1, max_length=MAX_FUNCTIONS)
    provenance_field: str = Field(
        default="annotation",
        pattern=FIELD_PATTERN,
        description="Each output row's provenance: every function's vote, the label model's probability, the source.",
    )
    class_balance: dict[Label, Annotated[float, Field(gt=0)]] | None = Field(
        default=None,
        description="label -> its expected share of the rows (normalised), the label model's prior; default: the "
        "given labels' shares when they hold every label, else uniform.",
    )
    epochs: int = Field(default=500, ge=1, le=10000, description="The label model's training epochs.")
    seed: int = Field(default=0, ge=0, le=2**31 - 1)
    filename: str | None = Field(default=None, min_length=1, max_length=200, pattern=r"^[^/\\\x00]+$",
                                 description="The labeled file's name (default `<file>-labeled.jsonl`).")  # fmt: skip


class AnnotationStatus(StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"


class FunctionStats(BaseModel):
    """One labeling function over the rows (Snorkel's LFAnalysis), and its accuracy on the rows with a given label."""

    name: str
    type: str
    polarity: list[str] = Field(description="The labels it voted.")
    coverage: float = Field(description="Share of rows it voted on.")
    overlaps: float = Field(description="Share of rows it voted on where another function voted too.")
    conflicts: float = Field(description="Share of rows it voted on where another function voted differently.")
    votes: int
    accuracy: float | None = Field(default=None, description="On the rows with a given label it voted on.")


class LabelModelSummary(BaseModel):
    """What the label model did: rows labeled and left out, its weights, and scores on the given labels."""

    method: Literal["label_model", "majority_vote"] = Field(
        description="Snorkel's LabelModel; majority vote with fewer than 3 functions (the LabelModel needs 3)."
    )
    cardinality: int
    rows: int
    given: int = Field(description="Rows that already held a label (kept).")
    labeled: int = Field(description="Rows the label model labeled.")
    abstained: int = Field(description="Rows every function abstained on: left out of the labeled file.")
    coverage: float = Field(description="Share of rows at least one function voted on.")
    class_balance: dict[str, int] = Field(description="Labels written, per label (given ones included).")
    function_weights: dict[str, float] = Field(description="Each function's estimated accuracy (LabelModel).")
    accuracy: float | None = Field(default=None, description="Label model vs the given labels (covered rows).")
    majority_vote_accuracy: float | None = Field(default=None, description="Majority vote, the same rows.")
    mean_probability: float | None = Field(default=None, description="Mean probability of the labels written.")


class AnnotationError(BaseModel):
    code: str = Field(description="e.g. `annotation_failed`, `worker_lost`, `invalid_rows`.")
    message: str


class Annotation(BaseModel):
    """One annotation run: the request, its status, per-function stats, the label model and the output file."""

    id: str
    object: Literal["annotation"] = "annotation"
    status: AnnotationStatus
    file_id: str
    text_field: str
    label_field: str
    given_field: str | None = None
    labels: list[str]
    functions: list[dict[str, Any]] = Field(description="The functions as run, each with its `name`.")
    provenance_field: str = "annotation"
    class_balance: dict[str, float] | None = None
    epochs: int = 500
    seed: int = 0
    filename: str | None = None
    created_at: int
    started_at: int | None = None
    finished_at: int | None = None
    function_stats: list[FunctionStats] = Field(default_factory=list)
    label_model: LabelModelSummary | None = None
    output_file_id: str | None = Field(default=None, description="The labeled file (an ordinary file) once "
                                       "succeeded: train on it like an upload.")  # fmt: skip
    error: AnnotationError | None = None


class AnnotationList(ListObject[Annotation]):
    """The tenant's annotations, newest first."""
