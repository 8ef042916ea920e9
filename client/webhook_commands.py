"""`ftjobs webhooks create|list|delete|deliveries`: a tenant's webhook endpoints from the command line."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel

from ftjobs.client.client import Client
from ftjobs.client.display import table
from ftjobs.client.models.webhooks import WebhookEventType


def add_parser(command: Callable[..., argparse.ArgumentParser]) -> None:
    """The `webhooks` command and its actions, on the CLI's sub-parsers (`command` adds one)."""
    p = command("webhooks", "manage webhook endpoints (job status events POSTed to your URL, signed)")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    c = actions.add_parser("create", help="register a URL; prints its signing secret once")
    c.add_argument("url")
    c.add_argument(
        "--event-type",
        action="append",
        choices=[t.value for t in WebhookEventType],
        help="only this event (repeat for more; default: all)",
    )
    c.add_argument("--description")
    actions.add_parser("list", help="list the endpoints")
    d = actions.add_parser("delete", help="delete an endpoint")
    d.add_argument("webhook")
    h = actions.add_parser("deliveries", help="an endpoint's recent delivery attempts, newest first")
    h.add_argument("webhook")
    h.add_argument("--limit", type=int, default=20)


def run(args: argparse.Namespace, api: Client) -> int:
    if args.action == "create":
        created = api.webhooks.create(args.url, event_types=args.event_type, description=args.description)
        if not _json(args, created):
            print(created.id)
            print(f"secret (shown once): {created.secret}", file=sys.stderr)
    elif args.action == "list":
        page = api.webhooks.list(limit=100)
        if not _json(args, page):
            rows = [(e.id, e.url, ",".join(t.removeprefix("fine_tuning.job.") for t in e.event_types or []) or "all")
                    for e in page.data]  # fmt: skip
            print(table(["id", "url", "events"], rows))
    elif args.action == "delete":
        deleted = api.webhooks.delete(args.webhook)
        if not _json(args, deleted):
            print(f"deleted {deleted.id}")
    else:
        history = api.webhooks.deliveries(args.webhook, limit=args.limit)
        if not _json(args, history):
            attempts = [
                (_when(d.created_at), d.event_id, d.type.removeprefix("fine_tuning.job."), d.attempt,
                 d.status_code, "delivered" if d.delivered else d.error)
                for d in history.data
            ]  # fmt: skip
            print(table(["at", "event", "type", "attempt", "status", "outcome"], attempts))
    return 0


def _json(args: argparse.Namespace, value: BaseModel) -> bool:
    if getattr(args, "json", False):
        print(json.dumps(value.model_dump(mode="json"), indent=2))
        return True
    return False


def _when(ts: float) -> Any:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))
