"""The `ftjobs` console script: the client's commands, plus those that start processes here (up, worker, demo)."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from ftjobs.client import cli


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


def main(argv: Sequence[str] | None = None) -> int:
    """Run one `ftjobs` command; returns the exit code."""
    return cli.main(argv, local=LOCAL)


if __name__ == "__main__":
    sys.exit(main())
