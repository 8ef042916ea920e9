"""A tenant's webhook endpoints (create, list, get, delete) and their delivery history, in the layout of core/keys.py.

The secret is made here in Standard Webhooks' form (`whsec_` + base64 of 32 random bytes), returned once by
`create` and kept in Redis as it is: the dispatcher (launch/webhooks.py) signs with it, which a hash could not do.
A URL is checked against SSRF (core/webhook_targets.py: resolved now, every address public unless the deployment
allows more) before it is stored; the dispatcher checks it again before each attempt.
"""

from __future__ import annotations

import base64
import re
import secrets
import time
from typing import cast

from redis import Redis

from ftjobs.client.models.webhooks import (
    WEBHOOK_ID_PATTERN,
    WebhookDelivery,
    WebhookDeliveryList,
    WebhookEndpoint,
    WebhookEndpointCreate,
    WebhookEndpointCreated,
    WebhookEndpointDeleted,
    WebhookEndpointList,
)
from ftjobs.core import keys
from ftjobs.core.records import as_text, decode_entry, new_id
from ftjobs.core.settings import Settings
from ftjobs.core.webhook_targets import TargetPolicy, TargetRefused, resolve
from ftjobs.core.webhooks import endpoints
from ftjobs.service.errors import WebhookNotFound, WebhookUrlNotAllowed
from ftjobs.service.limits import quota_exceeded
from ftjobs.service.store import StreamEntry

MAX_ENDPOINTS = 20  # per tenant: each status change is sent to every one of them
SECRET_BYTES = 32  # Standard Webhooks: between 24 and 64 bytes

# Store an endpoint unless the tenant has ARGV[3] already: KEYS[1] = the tenant's endpoints; ARGV = id, JSON, cap.
ADD_ENDPOINT = """
if redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[3]) then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
"""


def policy_of(settings: Settings) -> TargetPolicy:
    """The deployment's SSRF policy (FTJOBS_WEBHOOK_ALLOW_PRIVATE, FTJOBS_WEBHOOK_ALLOW_CIDRS)."""
    return TargetPolicy(settings.webhook_allow_private, settings.webhook_allow_cidrs)


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


class WebhookStore:
    """Endpoints and delivery history of every tenant; every lookup is scoped by tenant."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._add = redis.register_script(ADD_ENDPOINT)

    def create(self, tenant: str, req: WebhookEndpointCreate, policy: TargetPolicy) -> WebhookEndpointCreated:
        """Check the URL (WebhookUrlNotAllowed naming `url`), then store the endpoint with a new secret."""
        try:
            resolve(req.url, policy)
        except TargetRefused as exc:
            raise WebhookUrlNotAllowed(f"The webhook URL is not allowed: {exc}.", param="url") from None
        event_types = list(dict.fromkeys(req.event_types)) if req.event_types else None
        endpoint = WebhookEndpointCreated(
            id=new_id("webhook-"),
            url=req.url,
            event_types=event_types,
            description=req.description,
            created_at=int(time.time()),
            secret=new_secret(),
        )
        added = self._add(
            keys=[keys.webhooks_key(tenant)], args=[endpoint.id, endpoint.model_dump_json(), MAX_ENDPOINTS]
        )
        if not added:
            raise quota_exceeded("max_webhook_endpoints", MAX_ENDPOINTS, "This tenant has as many endpoints as allowed")
        return endpoint

    def list(self, tenant: str, after: str | None, limit: int) -> WebhookEndpointList:
        """Newest first; `after`: the last id of the previous page."""
        found = [e for e in endpoints(self.redis, tenant) if after is None or e.id < after]
        page = [WebhookEndpoint.model_validate(e.model_dump(exclude={"secret"})) for e in found[:limit]]
        return WebhookEndpointList(data=page, has_more=len(found) > limit, last_id=page[-1].id if page else None)

    def get(self, tenant: str, endpoint_id: str) -> WebhookEndpoint:
        raw = self.redis.hget(keys.webhooks_key(tenant), endpoint_id) if _valid(endpoint_id) else None
        if raw is None:
            raise WebhookNotFound(f"No webhook endpoint {endpoint_id!r}.")
        stored = WebhookEndpointCreated.model_validate_json(raw)
        return WebhookEndpoint.model_validate(stored.model_dump(exclude={"secret"}))

    def delete(self, tenant: str, endpoint_id: str) -> WebhookEndpointDeleted:
        """Forget the endpoint and its history; deliveries still waiting for it are dropped by the dispatcher."""
        self.get(tenant, endpoint_id)
        pipe = self.redis.pipeline(transaction=True)
        pipe.hdel(keys.webhooks_key(tenant), endpoint_id)
        pipe.delete(keys.webhook_history_key(tenant, endpoint_id))
        pipe.execute()
        return WebhookEndpointDeleted(id=endpoint_id)

    def deliveries(self, tenant: str, endpoint_id: str, after: str | None, limit: int) -> WebhookDeliveryList:
        """The endpoint's recent attempts, newest first; `after`: the last attempt id of the previous page."""
        self.get(tenant, endpoint_id)
        if after == "0-0":  # nothing is older
            return WebhookDeliveryList(data=[], has_more=False)
        high = f"({after}" if after else "+"
        raw = cast(
            list[StreamEntry],
            self.redis.xrevrange(keys.webhook_history_key(tenant, endpoint_id), max=high, min="-", count=limit + 1),
        )
        page = [WebhookDelivery.model_validate({**decode_entry(body), "id": as_text(sid)}) for sid, body in raw[:limit]]
        return WebhookDeliveryList(data=page, has_more=len(raw) > limit, last_id=page[-1].id if page else None)


def _valid(endpoint_id: str) -> bool:
    return re.fullmatch(WEBHOOK_ID_PATTERN, endpoint_id) is not None
