"""Webhooks: a tenant's endpoints (URL + signing secret), the events they receive, and each delivery attempt.

An endpoint receives `fine_tuning.job.<status>` events, signed per Standard Webhooks (`webhook-id`,
`webhook-timestamp`, `webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">`).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, Field

from ftjobs.client.models.common import STRICT, Page

WEBHOOK_ID_PATTERN = r"^webhook-[0-9a-f]{20}$"
EVENT_TYPE_PREFIX = "fine_tuning.job."


class WebhookEventType(StrEnum):
    """An event an endpoint can subscribe to: a job status change `fine_tuning.job.<status>`, or
    `monitor.degraded` or `monitor.skipped` (data: the monitor run)."""

    running = "fine_tuning.job.running"
    succeeded = "fine_tuning.job.succeeded"
    failed = "fine_tuning.job.failed"
    cancelled = "fine_tuning.job.cancelled"
    paused = "fine_tuning.job.paused"
    monitor_degraded = "monitor.degraded"  # a monitor's run found the metric dropped past its threshold (monitors.py)
    monitor_skipped = "monitor.skipped"  # a scheduled monitor run started nothing: the tenant was at max_active_jobs


class WebhookEndpointCreate(BaseModel):
    """Body of `POST /v1/webhooks`."""

    model_config = STRICT

    url: str = Field(
        min_length=1,
        max_length=2048,
        description="Where events are POSTed: http(s) only; its host must resolve to public addresses unless the "
        "deployment allows private ones.",
    )
    event_types: list[WebhookEventType] | None = Field(
        default=None, max_length=len(WebhookEventType), description="Only these events (default: all)."
    )
    description: str | None = Field(default=None, max_length=256, description="A label for people.")


class WebhookEndpoint(BaseModel):
    """A registered endpoint; its secret is shown only once, when it is created."""

    object: Literal["webhook_endpoint"] = "webhook_endpoint"
    id: str = Field(pattern=WEBHOOK_ID_PATTERN)
    url: str
    event_types: list[WebhookEventType] | None = Field(default=None, description="None: every event.")
    description: str | None = None
    created_at: int = Field(description="Unix seconds.")


class WebhookEndpointCreated(WebhookEndpoint):
    """The endpoint just created, with its secret (`whsec_<base64>`): keep it, it is never shown again."""

    secret: str = Field(description="The Standard Webhooks signing secret, `whsec_<base64>`.")


class WebhookEndpointList(Page[WebhookEndpoint]):
    """A tenant's webhook endpoints, newest first."""


class WebhookEndpointDeleted(BaseModel):
    object: Literal["webhook_endpoint"] = "webhook_endpoint"
    id: str
    deleted: Literal[True] = True


class WebhookEvent(BaseModel):
    """The body POSTed to an endpoint: the same `id` (also the `webhook-id` header) on every retry."""

    id: str = Field(description="The event id; a receiver that sees it twice has seen one event.")
    type: WebhookEventType
    created_at: int = Field(description="Unix seconds of the status change.")
    data: dict[str, Any] = Field(description="The job: `id`, `status`, and `error` and `metadata` when it has them.")


class WebhookDelivery(BaseModel):
    """One attempt to deliver an event to an endpoint."""

    id: str = Field(description="The attempt's id (a cursor for `after`).")
    event_id: str
    type: WebhookEventType
    job_id: str | None = None
    attempt: int = Field(ge=1, description="1 for the first try, then each retry.")
    delivered: bool = Field(description="The endpoint answered 2xx.")
    status_code: int | None = Field(default=None, description="The endpoint's HTTP status; none if no answer.")
    error: str | None = Field(default=None, description="Why the attempt failed (timeout, refused address ...).")
    response_body: str | None = Field(default=None, description="The first few hundred bytes of the answer.")
    created_at: float = Field(description="Unix seconds when the attempt started.")
    duration_ms: float
    next_attempt_at: float | None = Field(default=None, description="When the next retry is due; none: no more.")


class WebhookDeliveryList(Page[WebhookDelivery]):
    """An endpoint's recent delivery attempts, newest first (a bounded history)."""
