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
    openai    OpenAI's fine-tuning shapes (`/v1/fine_tuning/jobs`), as the official SDK parses them
    events    a job's events and metric points
    webhooks  webhook endpoints, the events POSTed to them, delivery attempts
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
    LabelIssue,
    LabelIssues,
    LengthStats,
    SourceFormat,
    TokenStats,
)
from ftjobs.client.models.jobs import (
    DPO_METHODS,
    PARENT_TASKS,
    REFERENCE_FORMATS,
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
from ftjobs.client.models.openai import (
    FileDeleted,
    FineTuningJob,
    FineTuningJobCheckpoint,
    FineTuningJobCheckpointList,
    FineTuningJobCreate,
    FineTuningJobEvent,
    FineTuningJobEventList,
    FineTuningJobList,
    ModelDeleted,
)
from ftjobs.client.models.training import DEDUP_THRESHOLD, DataOptions, EarlyStopping, EvalGeneration, Hyperparameters
from ftjobs.client.models.webhooks import (
    WEBHOOK_ID_PATTERN,
    WebhookDelivery,
    WebhookDeliveryList,
    WebhookEndpoint,
    WebhookEndpointCreate,
    WebhookEndpointCreated,
    WebhookEndpointDeleted,
    WebhookEndpointList,
    WebhookEvent,
    WebhookEventType,
)

__all__ = [
    "WEBHOOK_ID_PATTERN",
    "WebhookDelivery",
    "WebhookDeliveryList",
    "WebhookEndpoint",
    "WebhookEndpointCreate",
    "WebhookEndpointCreated",
    "WebhookEndpointDeleted",
    "WebhookEndpointList",
    "WebhookEvent",
    "WebhookEventType",
    "ModelDeleted",
    "FineTuningJobList",
    "FineTuningJobEventList",
    "FineTuningJobEvent",
    "FineTuningJobCreate",
    "FineTuningJobCheckpointList",
    "FineTuningJobCheckpoint",
    "FineTuningJob",
    "FileDeleted",
    "ADAPTER_SHAPE_FIELDS",
    "DEDUP_THRESHOLD",
    "DEFAULT_TENANT",
    "FILE_ID_PATTERN",
    "JOB_ID_PATTERN",
    "MERGEABLE_METHODS",
    "PROMPT_METHODS",
    "TASK_FORMATS",
    "DPO_METHODS",
    "PARENT_TASKS",
    "REFERENCE_FORMATS",
    "TENANT_PATTERN",
    "TERMINAL_STATUSES",
    "AdapterMethod",
    "Artifact",
    "ArtifactList",
    "DataOptions",
    "EarlyStopping",
    "EvalGeneration",
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
    "LabelIssue",
    "LabelIssues",
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
