"""`client.webhooks`: a tenant's webhook endpoints (`/v1/webhooks`) and their deliveries, for both clients.

    hook = ftjobs.webhooks.create("https://example.com/hooks", event_types=["fine_tuning.job.succeeded"])
    hook.secret   # whsec_...: shown once; verify each request with it (standardwebhooks.Webhook(secret).verify)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ftjobs.client.base import Plan
from ftjobs.client.models.webhooks import (
    WebhookDeliveryList,
    WebhookEndpoint,
    WebhookEndpointCreated,
    WebhookEndpointDeleted,
    WebhookEndpointList,
    WebhookEventType,
)
from ftjobs.client.resources import Plans, _seg


class WebhooksPlans(Plans):
    def create(
        self, url: str, *, event_types: Sequence[WebhookEventType | str] | None = None, description: str | None = None
    ) -> Plan[WebhookEndpointCreated]:
        """Register an endpoint; the result's `secret` is shown only this once."""
        body: dict[str, Any] = {"url": url}
        if event_types is not None:
            body["event_types"] = [str(t) for t in event_types]
        if description is not None:
            body["description"] = description
        return (yield from self._core._post("/v1/webhooks", WebhookEndpointCreated, json=body))

    def list(self, *, after: str | None = None, limit: int = 20) -> Plan[WebhookEndpointList]:
        """One page of endpoints, newest first."""
        return (yield from self._core._get("/v1/webhooks", WebhookEndpointList, {"after": after, "limit": limit}))

    def get(self, webhook_id: str) -> Plan[WebhookEndpoint]:
        return (yield from self._core._get(f"/v1/webhooks/{_seg(webhook_id)}", WebhookEndpoint))

    def delete(self, webhook_id: str) -> Plan[WebhookEndpointDeleted]:
        """Delete an endpoint (nothing more is sent to it)."""
        response = yield from self._core._request("DELETE", f"/v1/webhooks/{_seg(webhook_id)}")
        return self._core._parse(response, WebhookEndpointDeleted)

    def deliveries(
        self, webhook_id: str, *, after: str | None = None, limit: int = 20
    ) -> Plan[WebhookDeliveryList]:
        """An endpoint's recent delivery attempts, newest first (status code, error, timings)."""
        path = f"/v1/webhooks/{_seg(webhook_id)}/deliveries"
        return (yield from self._core._get(path, WebhookDeliveryList, {"after": after, "limit": limit}))


class Webhooks:
    """`client.webhooks`: create, list, get, delete endpoints; their deliveries."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self._plans = WebhooksPlans(client)

    def create(
        self, url: str, *, event_types: Sequence[WebhookEventType | str] | None = None, description: str | None = None
    ) -> WebhookEndpointCreated:
        """Register an endpoint; the result's `secret` is shown only this once."""
        created: WebhookEndpointCreated = self._client._run(
            self._plans.create(url, event_types=event_types, description=description)
        )
        return created

    def list(self, *, after: str | None = None, limit: int = 20) -> WebhookEndpointList:
        page: WebhookEndpointList = self._client._run(self._plans.list(after=after, limit=limit))
        return page

    def get(self, webhook_id: str) -> WebhookEndpoint:
        endpoint: WebhookEndpoint = self._client._run(self._plans.get(webhook_id))
        return endpoint

    def delete(self, webhook_id: str) -> WebhookEndpointDeleted:
        deleted: WebhookEndpointDeleted = self._client._run(self._plans.delete(webhook_id))
        return deleted

    def deliveries(self, webhook_id: str, *, after: str | None = None, limit: int = 20) -> WebhookDeliveryList:
        page: WebhookDeliveryList = self._client._run(self._plans.deliveries(webhook_id, after=after, limit=limit))
        return page


class AsyncWebhooks:
    """`AsyncClient.webhooks`: as `Webhooks`, awaitable."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self._plans = WebhooksPlans(client)

    async def create(
        self, url: str, *, event_types: Sequence[WebhookEventType | str] | None = None, description: str | None = None
    ) -> WebhookEndpointCreated:
        created: WebhookEndpointCreated = await self._client._run(
            self._plans.create(url, event_types=event_types, description=description)
        )
        return created

    async def list(self, *, after: str | None = None, limit: int = 20) -> WebhookEndpointList:
        page: WebhookEndpointList = await self._client._run(self._plans.list(after=after, limit=limit))
        return page

    async def get(self, webhook_id: str) -> WebhookEndpoint:
        endpoint: WebhookEndpoint = await self._client._run(self._plans.get(webhook_id))
        return endpoint

    async def delete(self, webhook_id: str) -> WebhookEndpointDeleted:
        deleted: WebhookEndpointDeleted = await self._client._run(self._plans.delete(webhook_id))
        return deleted

    async def deliveries(
        self, webhook_id: str, *, after: str | None = None, limit: int = 20
    ) -> WebhookDeliveryList:
        page: WebhookDeliveryList = await self._client._run(
            self._plans.deliveries(webhook_id, after=after, limit=limit)
        )
        return page

