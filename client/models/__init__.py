"""The wire contract: every request and response body of the ftjobs API, one module per resource.

Imported by the client, the service and the worker alike; it depends on pydantic only. Import the names
from here (`from ftjobs.client.models import Job`); the modules below are how the contract is laid out:

    catalog   the base models a deployment offers (`GET /v1/models`)
    common    id patterns, the default tenant, the list envelopes `ListObject[T]` and `Page[T]`, `Health`
    errors    `ErrorBody`, the one error body of every non-2xx response
    files     uploaded datasets and their profiles
    methods   fine-tuning methods (LoRA, IA3, prompt tuning, adapters, full)
    training  `Hyperparameters` and `DataOptions`
    jobs      `JobCreate`, `Job`, statuses, artifacts, the queue payload
    events    a job's events and metric points
"""

from ftjobs.client.models.catalog import ModelList, ModelObject
from ftjobs.client.models.common import (
    DEFAULT_TENANT,
    FILE_ID_PATTERN,
    JOB_ID_PATTERN,
    TENANT_PATTERN,
    Health,
    ListObject,
    Page,
)
from ftjobs.client.models.errors import ErrorBody, ErrorDetail, FileProblem
from ftjobs.client.models.events import Event, EventLevel, EventList, EventType, MetricList, MetricPoint
from ftjobs.client.models.files import (
    FieldProfile,
    FileFormat,
    FileList,
    FileObject,
    FileProfile,
    FileWarning,
    LabelCount,
    LengthStats,
    SourceFormat,
    TokenStats,
)
from ftjobs.client.models.jobs import (
    TASK_FORMATS,
    TERMINAL_STATUSES,
    Artifact,
    ArtifactList,
    Job,
    JobCreate,
    JobError,
    JobList,
    JobStatus,
    Progress,
    QueuePayload,
    Task,
    auto_reasons,
    resolve_hyperparameters,
)
from ftjobs.client.models.methods import (
    ADAPTER_SHAPE_FIELDS,
    MERGEABLE_METHODS,
    PROMPT_METHODS,
    AdapterMethod,
    FullMethod,
    IA3Method,
    LoraMethod,
    Method,
    PrefixTuningMethod,
    PromptTuningMethod,
    PTuningMethod,
)
from ftjobs.client.models.training import DEDUP_THRESHOLD, DataOptions, EarlyStopping, Hyperparameters

__all__ = [
    "ADAPTER_SHAPE_FIELDS",
    "DEDUP_THRESHOLD",
    "DEFAULT_TENANT",
    "FILE_ID_PATTERN",
    "JOB_ID_PATTERN",
    "MERGEABLE_METHODS",
    "PROMPT_METHODS",
    "TASK_FORMATS",
    "TENANT_PATTERN",
    "TERMINAL_STATUSES",
    "AdapterMethod",
    "Artifact",
    "ArtifactList",
    "DataOptions",
    "EarlyStopping",
    "ErrorBody",
    "ErrorDetail",
    "Event",
    "EventLevel",
    "EventList",
    "EventType",
    "FieldProfile",
    "FileFormat",
    "FileList",
    "FileObject",
    "FileProblem",
    "FileProfile",
    "FileWarning",
    "FullMethod",
    "Health",
    "Hyperparameters",
    "IA3Method",
    "Job",
    "JobCreate",
    "JobError",
    "JobList",
    "JobStatus",
    "LabelCount",
    "LengthStats",
    "ListObject",
    "LoraMethod",
    "Method",
    "MetricList",
    "MetricPoint",
    "ModelList",
    "ModelObject",
    "Page",
    "PrefixTuningMethod",
    "Progress",
    "PromptTuningMethod",
    "PTuningMethod",
    "QueuePayload",
    "SourceFormat",
    "Task",
    "TokenStats",
    "auto_reasons",
    "resolve_hyperparameters",
]
