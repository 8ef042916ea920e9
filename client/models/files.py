"""Uploaded datasets: `/v1/files` (upload, list, get) and `/v1/files/{id}/profile`."""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, Field

from ftjobs.client.models.common import Page


class FileFormat(StrEnum):
    """Row shape of an uploaded JSONL file, detected from the keys of its rows."""

    messages = "messages"  # {"messages": [{"role", "content"}, ...]}
    prompt_completion = "prompt_completion"  # {"prompt", "completion"}
    text = "text"  # {"text"}
    text_label = "text_label"  # {"text", "label"}
    source_target = "source_target"  # {"source", "target"}
    # {"input": {"messages"}, "preferred_output", "non_preferred_output"} (OpenAI) or {"prompt", "chosen", "rejected"}
    preference = "preference"


SourceFormat = Literal["jsonl", "csv", "parquet"]


class FileWarning(BaseModel):
    """A fixable issue found at upload: the file is accepted; `count` rows have it."""

    code: str = Field(
        description="`duplicate_row`, `label_whitespace`, `empty_optional_field`, `empty_message`, `single_label`."
    )
    field: str | None = None
    count: int
    lines: list[int] = Field(default_factory=list, description="The first few lines that have it.")
    message: str


class FileObject(BaseModel):
    """An uploaded dataset."""

    id: str
    object: Literal["file"] = "file"
    tenant: str
    filename: str
    bytes: int
    rows: int = Field(description="Number of non-empty JSONL rows.")
    format: FileFormat | None = Field(
        description="Row shape detected from the keys of the rows; null for a job's result file (not a dataset)."
    )
    sha256: str = Field(description="sha256 of the stored JSONL rows (CSV and Parquet uploads converted).")
    source_sha256: str | None = Field(
        default=None,
        description="sha256 of the bytes as uploaded: `GET /v1/files?sha256=` finds an upload of the same file.",
    )
    created_at: int = Field(description="Unix seconds.")
    purpose: Literal["fine-tune", "fine-tune-results"] = Field(
        default="fine-tune", description="`fine-tune`: an upload; `fine-tune-results`: a job's metrics CSV."
    )
    status: Literal["processed"] = Field(default="processed", description="Stored and validated (OpenAI's name).")
    warnings: list[str] = Field(default_factory=list, description="Fixable problems found at upload.")
    warning_details: list[FileWarning] = Field(
        default_factory=list, description="The same warnings, structured (code, field, count, first lines)."
    )
    source_format: SourceFormat = Field(
        default="jsonl", description="What was uploaded; CSV and Parquet are converted to JSONL rows."
    )


class LengthStats(BaseModel):
    """Length distribution of one field over the rows (characters or whitespace-separated words)."""

    min: int
    mean: float
    median: float
    p95: float
    max: int


class FieldProfile(BaseModel):
    name: str = Field(description="Row field; `messages` is the conversation's content, all turns together.")
    empty: int = Field(description="Rows where the field is empty or whitespace only.")
    missing: int = Field(default=0, description="Rows without the field.")
    chars: LengthStats | None = None
    words: LengthStats | None = None


class LabelCount(BaseModel):
    label: str
    count: int
    fraction: float


class TokenStats(BaseModel):
    """Token lengths of a file's training examples as one job tokenized them (after its data preparation)."""

    job_id: str
    model: str
    created_at: float
    examples: int
    min: int | None = None
    median: int | None = None
    p95: int | None = None
    max: int | None = None
    max_seq_length: int | None = None
    truncated: int | None = Field(default=None, description="Examples that reach max_seq_length (cut there).")
    histogram: dict[str, int] = Field(default_factory=dict, description="Power-of-two buckets: `<=64`: count.")


class LabelIssue(BaseModel):
    """One row that is likely mislabeled."""

    line: int = Field(description="Line (CSV line, Parquet row) of the uploaded file, 1-based.")
    label: str = Field(description="The label the row has.")
    suggested: str = Field(description="The label the out-of-sample model finds most probable.")
    score: float = Field(description="Label quality in [0, 1]: the out-of-sample probability of the given label.")


class LabelIssues(BaseModel):
    """text_label files: rows most likely mislabeled (cleanlab confident learning), as a job's validation found."""

    job_id: str = Field(description="The job whose validation checked the file (the first classification job).")
    created_at: float
    rows: int = Field(description="Rows checked.")
    found: int = Field(description="Rows flagged; `issues` lists the most suspect first (up to 100).")
    method: str
    issues: list[LabelIssue] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)


class FileProfile(BaseModel):
    """`GET /v1/files/{id}/profile`: what is in a dataset, computed while it streamed in."""

    object: Literal["file.profile"] = "file.profile"
    file_id: str
    rows: int
    format: FileFormat
    columns: list[str] = Field(description="Every top-level key seen in the rows.")
    fields: list[FieldProfile]
    labels: list[LabelCount] | None = Field(default=None, description="text_label files: most frequent first.")
    exact_duplicates: int = Field(description="Rows identical (same fields and values) to an earlier row.")
    duplicate_texts: int | None = Field(
        default=None, description="text_label files: rows whose text occurs earlier (any label)."
    )
    conflicting_labels: int | None = Field(
        default=None, description="text_label files: rows whose text occurs earlier with a different label."
    )
    notes: list[str] = Field(default_factory=list)
    tokens: list[TokenStats] = Field(
        default_factory=list,
        description="Token lengths computed by the validation of jobs training on this file, newest first "
        "(the last few jobs).",
    )
    label_issues: LabelIssues | None = Field(
        default=None,
        description="text_label files: likely label errors, found when a classification job first validates the "
        "file as its training_file (null until then).",
    )


class FileList(Page[FileObject]):
    """A page of uploaded files (`GET /v1/files`)."""
