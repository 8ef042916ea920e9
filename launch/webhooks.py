"""The webhook dispatcher: `python -m ftjobs.launch.webhooks` (`ftjobs up` starts one; run more anywhere).

It delivers what core/webhooks.py queues: it fans the outbox out into deliveries, claims those that are due, and
POSTs each one signed per Standard Webhooks (the `standardwebhooks` package signs: `webhook-id`,
`webhook-timestamp`, `webhook-signature: v1,<base64 HMAC-SHA256>`). A 2xx ends a delivery; anything else is retried
after FTJOBS_WEBHOOK_RETRY_S (5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h: about a day), then given up.

A process of its own, beside the API and the workers: a job never waits for a receiver (the worker only appends
to the outbox, inside the write that changes the status), a long training run holds no delivery, and the API
keeps serving requests only. Dispatchers share the work through the outbox's consumer group and the leases of the
delivery queue: a crashed one's entries and attempts are taken over by the others after FTJOBS_WEBHOOK_LEASE_S.

Each attempt resolves the URL's host again and connects to the address it checked (core/webhook_targets.py),
follows no redirect, gives up after FTJOBS_WEBHOOK_TIMEOUT_S per phase, and keeps at most RESPONSE_BYTES of the
answer.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from types import FrameType

import httpx
from redis import Redis
from redis.exceptions import RedisError
from standardwebhooks import Webhook

from ftjobs.client.models.webhooks import WebhookDelivery, WebhookEndpointCreated, WebhookEventType
from ftjobs.core import keys
from ftjobs.core.logs import setup_logging
from ftjobs.core.queue import connect, redact_url
from ftjobs.core.settings import Settings
from ftjobs.core.telemetry import count
from ftjobs.core.webhook_targets import TargetPolicy, TargetRefused, resolve
from ftjobs.core.webhooks import Delivery, WebhookQueue
from ftjobs.service.version import API_VERSION

log = logging.getLogger("ftjobs.webhooks")
RESPONSE_BYTES = 256  # of a receiver's answer, kept in the delivery history
CONCURRENCY = 16  # attempts in flight per dispatcher
MAX_WAIT_MS = 1000  # longest wait for new outbox entries before looking at due retries again
TRIM_EVERY_S = 60.0  # how often finished outbox entries are trimmed
USER_AGENT = f"ftjobs-webhooks/{API_VERSION}"


def send(
    http: httpx.Client, endpoint: WebhookEndpointCreated, delivery: Delivery, policy: TargetPolicy
) -> WebhookDelivery:
    """One signed POST of `delivery` to `endpoint` (checked against `policy` first) -> the attempt's outcome."""
    started, clock = time.time(), time.monotonic()
    status_code: int | None = None
    error: str | None = None
    answer: str | None = None
    try:
        target = resolve(endpoint.url, policy)
    except TargetRefused as exc:
        error = f"not sent: {exc}"
    else:
        sent_at = datetime.fromtimestamp(int(time.time()), UTC)  # whole seconds: the header and the signature agree
        headers = {
            "host": target.host_header,
            "content-type": "application/json",
            "user-agent": USER_AGENT,
            "webhook-id": delivery.event_id,
            "webhook-timestamp": str(int(sent_at.timestamp())),
            "webhook-signature": Webhook(endpoint.secret).sign(delivery.event_id, sent_at, delivery.body),
        }
        tls = {"sni_hostname": target.host} if target.scheme == "https" else {}  # the certificate names the host
        try:
            with http.stream(
                "POST", target.connect_url, content=delivery.body.encode(), headers=headers, extensions=tls
            ) as response:
                status_code = response.status_code
                answer = _first_bytes(response, RESPONSE_BYTES)
        except httpx.TimeoutException as exc:
            error = f"timed out ({type(exc).__name__})"
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"[:300]
    delivered = status_code is not None and 200 <= status_code < 300
    if status_code is not None and not delivered:
        error = f"HTTP {status_code}" + (" (redirects are not followed)" if 300 <= status_code < 400 else "")
    return WebhookDelivery(
        id="",
        event_id=delivery.event_id,
        type=WebhookEventType(delivery.type),
        job_id=delivery.job_id,
        attempt=delivery.attempt,
        delivered=delivered,
        status_code=status_code,
        error=error,
        response_body=answer,
        created_at=started,
        duration_ms=round((time.monotonic() - clock) * 1000, 1),
    )


def _first_bytes(response: httpx.Response, limit: int) -> str:
    """At most `limit` bytes of the body, as text; the rest is never read."""
    kept = b""
    for chunk in response.iter_raw():
        kept += chunk
        if len(kept) >= limit:
            break
    return kept[:limit].decode(errors="replace")


class Dispatcher:
    """One dispatcher: fans the outbox out, claims due deliveries, sends them from a thread pool."""

    def __init__(
        self, redis: Redis, settings: Settings, consumer: str | None = None, concurrency: int = CONCURRENCY
    ) -> None:
        self.redis = redis
        self.settings = settings
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}"
        self.queue = WebhookQueue(redis, self.consumer, settings.webhook_lease_s)
        self.policy = TargetPolicy(settings.webhook_allow_private, settings.webhook_allow_cidrs)
        self.concurrency = concurrency
        self.stopping = threading.Event()
        # No connection reuse: two hosts on one address must not share a TLS connection made for one of them.
        self.http = httpx.Client(
            timeout=settings.webhook_timeout_s,
            follow_redirects=False,
            limits=httpx.Limits(max_keepalive_connections=0),
            trust_env=False,  # never through a proxy from the environment: the address checked is the one reached
        )
        self._pool = ThreadPoolExecutor(concurrency, thread_name_prefix="webhook")
        self._in_flight: set[Future[None]] = set()

    def run(self) -> None:
        """Deliver until `stopping` is set; attempts in flight then finish (each within the timeout)."""
        log.info("webhook dispatcher %s on %s", self.consumer, redact_url(self.settings.redis_url))
        trimmed = 0.0
        ready = False
        while not self.stopping.is_set():
            try:
                if not ready:
                    self.queue.ensure_group()
                    ready = True
                self.step()
                if time.monotonic() - trimmed > TRIM_EVERY_S:
                    self.queue.trim()
                    trimmed = time.monotonic()
            except RedisError as exc:
                if "NOGROUP" in str(exc):
                    ready = False  # the outbox was deleted (a flushed Redis): make the group again
                else:
                    log.warning("webhook dispatcher: Redis error (%s); retrying in 1 s", exc)
                self.stopping.wait(1.0)
            except Exception:  # a bad record must not end the process: its entry is claimed again after the lease
                log.exception("webhook dispatcher: unexpected error; retrying in 1 s")
                self.stopping.wait(1.0)
        self._pool.shutdown(wait=True)
        self.http.close()

    def step(self) -> None:
        """Start the due attempts there is room for, then fan out new outbox entries (waiting for some)."""
        self._in_flight = {f for f in self._in_flight if not f.done()}
        for delivery in self.queue.claim_due(time.time(), self.concurrency - len(self._in_flight)):
            self._in_flight.add(self._pool.submit(self.attempt, delivery))
        due = self.queue.next_due()
        wait_ms = MAX_WAIT_MS if due is None else min(MAX_WAIT_MS, max(1, int((due - time.time()) * 1000)))
        for entry_id, fields in self.queue.read(max(1, wait_ms)):  # 0 would wait forever
            self.queue.fan_out(entry_id, fields, time.time())

    def attempt(self, delivery: Delivery) -> None:
        """Send one delivery and record the outcome; an error leaves it leased, to be claimed again."""
        try:
            raw = self.redis.hget(keys.webhooks_key(delivery.tenant), delivery.endpoint_id)
            if raw is None:  # the endpoint was deleted: finishing drops the delivery
                self.queue.finish(delivery, _dropped(delivery), None)
                return
            outcome = send(self.http, WebhookEndpointCreated.model_validate_json(raw), delivery, self.policy)
            retries = self.settings.webhook_retry_s
            next_due = None
            if not outcome.delivered and delivery.attempt <= len(retries):
                next_due = time.time() + retries[delivery.attempt - 1]
            self.queue.finish(delivery, outcome.model_copy(update={"next_attempt_at": next_due}), next_due)
            result = "delivered" if outcome.delivered else "retry" if next_due else "given_up"
            count(self.redis, "webhook_deliveries_total", outcome=result)  # /metrics: ftjobs_webhook_deliveries
            log.info(
                "%s %s -> %s attempt %d: %s",
                delivery.event_id,
                delivery.type,
                delivery.endpoint_id,
                delivery.attempt,
                "delivered" if outcome.delivered else f"{outcome.error}; " + ("retry" if next_due else "given up"),
            )
        except Exception:
            log.exception("webhook attempt %s failed; it is retried after its lease", delivery.id)


def _dropped(delivery: Delivery) -> WebhookDelivery:
    return WebhookDelivery(
        id="",
        event_id=delivery.event_id,
        type=WebhookEventType(delivery.type),
        attempt=delivery.attempt,
        delivered=False,
        error="endpoint deleted",
        created_at=time.time(),
        duration_ms=0,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run a dispatcher with the FTJOBS_* settings until SIGTERM or Ctrl-C."""
    parser = argparse.ArgumentParser(prog="ftjobs webhooks-dispatcher", description=__doc__.split("\n")[0])
    parser.add_argument("--concurrency", type=int, default=CONCURRENCY, help="attempts in flight at once")
    args = parser.parse_args(argv)
    settings = Settings.from_env()
    setup_logging("webhooks", settings)  # FTJOBS_LOG_FORMAT; httpx's line per request off
    dispatcher = Dispatcher(connect(settings.redis_url), settings, concurrency=args.concurrency)

    def stop(signum: int, frame: FrameType | None) -> None:
        dispatcher.stopping.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, stop)
    dispatcher.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
