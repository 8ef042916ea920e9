"""`ftjobs evaluate FILE --job J` and `ftjobs monitors create|list|get|delete|run|runs` from the command line."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel

from ftjobs.client.client import Client
from ftjobs.client.display import table


def add_parser(command: Callable[..., argparse.ArgumentParser]) -> None:
    """The `evaluate` and `monitors` commands, on the CLI's sub-parsers (`command` adds one)."""
    p = command("evaluate", "evaluate a finished job (or a checkpoint of it, or a base model) on a file; no training")
    p.add_argument("file", help="id of the uploaded file to evaluate on")
    p.add_argument("--job", help="the succeeded job whose weights to evaluate")
    p.add_argument("--checkpoint-step", type=int, help="with --job: its weights kept at this step")
    p.add_argument("--model", help="without --job: a base model to evaluate as it is")
    p.add_argument("--task", help="without --job: the task (default causal_lm)")
    p.add_argument("--group-field", help="classification: accuracy and F1 per group of this row key")

    p = command("monitors", "watch a finished job on the newest upload of a dataset, on a cron schedule")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    c = actions.add_parser("create", help="watch a succeeded job; prints the monitor's id")
    c.add_argument("job")
    c.add_argument("--dataset", required=True, help="the filename whose newest upload each run evaluates on")
    c.add_argument("--schedule", required=True, help="a cron expression, e.g. '0 * * * *' (hourly)")
    c.add_argument("--metric", help="a key of the job's results.final (default f1 / eval_loss)")
    c.add_argument("--threshold", type=float, help="the largest drop that is still ok (default 0.05)")
    c.add_argument("--retrain", action="store_true", help="on a drop, continue training the job on the new file")
    actions.add_parser("list", help="list the monitors with their last run")
    for name, what in (("get", "show a monitor"), ("delete", "delete a monitor"), ("run", "run a monitor now")):
        actions.add_parser(name, help=what).add_argument("monitor")
    r = actions.add_parser("runs", help="a monitor's runs, newest first: metric, decision, retraining job")
    r.add_argument("monitor")
    r.add_argument("--limit", type=int, default=20)


def evaluate(args: argparse.Namespace, api: Client) -> int:
    options = {"group_field": args.group_field} if args.group_field else {}
    job = api.evaluations.create(file=args.file, job_id=args.job, checkpoint_step=args.checkpoint_step,
                                 model=args.model, task=args.task, **options)  # fmt: skip
    if not _json(args, job):
        print(job.id)
    return 0


def monitors(args: argparse.Namespace, api: Client) -> int:
    if args.action == "create":
        options = {k: v for k, v in (("metric", args.metric), ("threshold", args.threshold)) if v is not None}
        monitor = api.monitors.create(args.job, dataset=args.dataset, schedule=args.schedule, retrain=args.retrain,
                                      **options)  # fmt: skip
        if not _json(args, monitor):
            print(monitor.id)
    elif args.action == "list":
        page = api.monitors.list(limit=100)
        if not _json(args, page):
            rows = [(m.id, m.job_id, m.dataset, m.schedule, f"{m.metric} {m.reference:.4g}",
                     m.last_run.status if m.last_run else "-") for m in page.data]  # fmt: skip
            print(table(["id", "job", "dataset", "schedule", "reference", "last run"], rows))
    elif args.action == "get":
        monitor = api.monitors.get(args.monitor)
        if not _json(args, monitor):
            print(json.dumps(monitor.model_dump(mode="json"), indent=2))
    elif args.action == "delete":
        deleted = api.monitors.delete(args.monitor)
        if not _json(args, deleted):
            print(f"deleted {deleted.id}")
    elif args.action == "run":
        run = api.monitors.run(args.monitor)
        if not _json(args, run):
            print(f"{run.id} {run.status} {run.evaluation_job_id or run.error or ''}".rstrip())
    else:
        history = api.monitors.runs(args.monitor, limit=args.limit)
        if not _json(args, history):
            runs = [(_when(r.created_at), r.id, r.trigger, r.status, _num(r.value), _num(r.drop),
                     r.evaluation_job_id or r.reason or "-",  # a limit's name: what kept the job from starting
                     r.retrain_job_id or (r.reason if r.status == "degraded" else None) or "-")
                    for r in history.data]  # fmt: skip
            print(table(["at", "run", "trigger", "status", "value", "drop", "evaluation", "retraining"], runs))
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace, Client], int]] = {"evaluate": evaluate, "monitors": monitors}


def _json(args: argparse.Namespace, value: BaseModel) -> bool:
    if getattr(args, "json", False):
        print(json.dumps(value.model_dump(mode="json"), indent=2))
        return True
    return False


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def _when(ts: float) -> Any:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))
