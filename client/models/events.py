"""A job's event stream and metric points: `/v1/jobs/{id}/events` and `/v1/jobs/{id}/metrics`."""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, Field

from ftjobs.client.models.common import Page


class EventLevel(StrEnum):
    info = "info"
    warning = "warning"
    error = "error"


class EventType(StrEnum):
    message = "message"
    metrics = "metrics"
    checkpoint = "checkpoint"
    status = "status"


class Event(BaseModel):
    """One entry of a job's event stream; `id` is the Redis Stream id (ordered, use it as `after`)."""

    id: str
    created_at: float
    level: EventLevel = EventLevel.info
    type: EventType = EventType.message
    message: str
    data: dict[str, Any] = Field(default_factory=dict)


class EventList(Page[Event]):
    """A page of a job's events, oldest first (`GET /v1/jobs/{id}/events`)."""


class MetricPoint(BaseModel):
    """Metric values logged at one step; `split` is `train` or `eval`."""

    id: str
    step: int
    epoch: float | None = None
    split: Literal["train", "eval"]
    created_at: float
    values: dict[str, float]


class MetricList(Page[MetricPoint]):
    """A page of a job's metric points (`GET /v1/jobs/{id}/metrics`)."""
