"""The `ftjobs` console script: the client's commands, plus those that start processes here (up, worker, demo) and
the server-side admin commands (`ftjobs keys new`)."""

from __future__ import annotations

import argparse
import importlib
import json
import re
import secrets
import sys
from collections.abc import Sequence

from ftjobs.client import cli
from ftjobs.client.models import TENANT_PATTERN
from ftjobs.core.tenants import DEFAULT_SCOPES, Scope, key_hash

KEY_PREFIX = "ftj_"


def cmd_up(args: argparse.Namespace, rest: list[str]) -> int:
    from ftjobs.launch.stack import Stack, StackError  # the service extra; only `up` loads it

    try:
        # A busy port or a part that fails to start raises StackError before anything says "up".
        with Stack(args.data_dir, port=args.port, host=args.host, workers=args.workers) as stack:
            cli._note(f"ftjobs is up at {stack.url}  (data in {stack.data_dir}; Ctrl-C to stop)")
            print(stack.url, flush=True)
            code = int(stack.run_until_stopped())  # restarts what dies; returns on Ctrl-C or SIGTERM
            wait = f"up to {stack.stop_timeout:g} s; Ctrl-C again: now"
            cli._note(f"ftjobs: stopping (workers hand back running jobs, {wait})")
    except StackError as exc:
        return cli._failed(exc)
    return code


def cmd_worker(args: argparse.Namespace, rest: list[str]) -> int:
    worker = importlib.import_module("ftjobs.jobs.worker")  # the worker side: torch & co. stay out of other commands
    return int(worker.main(rest) or 0)


def cmd_demo(args: argparse.Namespace, rest: list[str]) -> int:
    from ftjobs.launch.demo import run_demo  # starts a whole stack: the service extra
    from ftjobs.launch.stack import StackError

    try:
        return int(run_demo(args.data_dir, epochs=args.epochs, learning_rate=args.learning_rate))
    except StackError as exc:
        return cli._failed(exc)


LOCAL = {"up": cmd_up, "worker": cmd_worker, "demo": cmd_demo}


def _scopes(raw: str) -> list[Scope]:
    try:
        return sorted({Scope(s.strip()) for s in raw.split(",") if s.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"scopes are a comma-separated list of {', '.join(Scope)}") from None


def _tenant(raw: str) -> str:
    if not re.fullmatch(TENANT_PATTERN, raw):
        raise argparse.ArgumentTypeError(f"a tenant name matches {TENANT_PATTERN}")
    return raw


def keys_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ftjobs keys", description="Manage API keys (on the server).")
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = sub.add_parser(
        "new",
        help="print a new random API key and the tenants-file lines that enable it",
        description="Print a new random API key (give it to the tenant; it is shown once) and the TOML lines to "
        "paste into FTJOBS_TENANTS_FILE: only its sha256 is stored. The API picks the change up within seconds.",
    )
    p.add_argument("--tenant", required=True, type=_tenant, help="the tenant the key acts for")
    p.add_argument(
        "--scopes", type=_scopes, default=sorted(DEFAULT_SCOPES), help="read,submit,admin (default: read,submit)"
    )
    p.add_argument("--name", default="", help="a label shown in logs and errors, never the key (e.g. ci)")
    return parser


def cmd_keys(argv: Sequence[str]) -> int:
    """`ftjobs keys new --tenant T [--scopes read,submit] [--name N]`."""
    args = keys_parser().parse_args(list(argv))
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    lines = [
        f"[[tenants.{args.tenant}.keys]]",
        f"sha256 = {json.dumps(key_hash(key))}",
        f"scopes = {json.dumps([s.value for s in args.scopes])}",
        *([f"name = {json.dumps(args.name)}"] if args.name else []),
    ]
    cli._note(f"New API key for tenant {args.tenant} (shown once; the server keeps only its sha256):")
    print(key)
    cli._note("Add these lines to the tenants file (FTJOBS_TENANTS_FILE); no restart needed:")
    print("\n" + "\n".join(lines), flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run one `ftjobs` command; returns the exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["keys"]:  # server-side admin: not a client command, so not in the client's parser
        return cmd_keys(args[1:])
    if args[:1] == ["webhooks-dispatcher"]:  # what `ftjobs up` runs beside the API; run more anywhere
        return int(importlib.import_module("ftjobs.launch.webhooks").main(args[1:]))
    return cli.main(argv, local=LOCAL)


if __name__ == "__main__":
    sys.exit(main())
