"""Webhook endpoints: create (the secret is shown once), list, get, delete, and each endpoint's recent deliveries."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query
from pydantic import AfterValidator

from ftjobs.client.models.webhooks import (
    WEBHOOK_ID_PATTERN,
    WebhookDeliveryList,
    WebhookEndpoint,
    WebhookEndpointCreate,
    WebhookEndpointCreated,
    WebhookEndpointDeleted,
    WebhookEndpointList,
)
from ftjobs.service.deps import RedisDep, SettingsDep, TenantDep
from ftjobs.service.errors import (
    MalformedBody,
    QuotaExceeded,
    RateLimited,
    ValidationError,
    WebhookNotFound,
    WebhookUrlNotAllowed,
    error_responses,
)
from ftjobs.service.store import stream_cursor
from ftjobs.service.webhooks import WebhookStore, policy_of

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])


def get_webhooks(redis: RedisDep) -> WebhookStore:
    return WebhookStore(redis)


WebhooksDep = Annotated[WebhookStore, Depends(get_webhooks)]
EndpointAfter = Annotated[
    str | None, Query(pattern=WEBHOOK_ID_PATTERN, description="Cursor: `last_id` of the previous page.")
]
DeliveryAfter = Annotated[
    str | None,
    Query(pattern=r"^[0-9]+(-[0-9]+)?$", description="Cursor: `last_id` of the previous page (`<ms>-<seq>`)."),
    AfterValidator(lambda after: None if after is None else stream_cursor(after)),
]


@router.post(
    "",
    status_code=201,
    responses=error_responses(MalformedBody, ValidationError, WebhookUrlNotAllowed, QuotaExceeded, RateLimited),
)
def create_webhook(
    req: WebhookEndpointCreate, tenant: TenantDep, settings: SettingsDep, webhooks: WebhooksDep
) -> WebhookEndpointCreated:
    """Register an endpoint for job status events; the response holds its signing secret, shown only this once."""
    return webhooks.create(tenant, req, policy_of(settings))


@router.get("", responses=error_responses(ValidationError))
def list_webhooks(
    tenant: TenantDep,
    webhooks: WebhooksDep,
    after: EndpointAfter = None,
    limit: Annotated[int, Query(ge=1, le=100, description="Page size.")] = 20,
) -> WebhookEndpointList:
    """List the tenant's webhook endpoints, newest first (secrets are never shown again)."""
    return webhooks.list(tenant, after, limit)


@router.get("/{webhook_id}", responses=error_responses(WebhookNotFound, ValidationError))
def get_webhook(webhook_id: str, tenant: TenantDep, webhooks: WebhooksDep) -> WebhookEndpoint:
    """Get one webhook endpoint."""
    return webhooks.get(tenant, webhook_id)


@router.delete("/{webhook_id}", responses=error_responses(WebhookNotFound, ValidationError))
def delete_webhook(webhook_id: str, tenant: TenantDep, webhooks: WebhooksDep) -> WebhookEndpointDeleted:
    """Delete an endpoint: nothing more is sent to it, retries waiting for it included."""
    return webhooks.delete(tenant, webhook_id)


@router.get("/{webhook_id}/deliveries", responses=error_responses(WebhookNotFound, ValidationError))
def list_webhook_deliveries(
    webhook_id: str,
    tenant: TenantDep,
    webhooks: WebhooksDep,
    after: DeliveryAfter = None,
    limit: Annotated[int, Query(ge=1, le=100, description="Page size.")] = 20,
) -> WebhookDeliveryList:
    """An endpoint's recent delivery attempts, newest first: event, attempt, status code, error, timings."""
    return webhooks.deliveries(tenant, webhook_id, after, limit)
