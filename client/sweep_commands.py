"""`ftjobs sweep create|list|show|cancel`: hyperparameter sweeps from the command line, with a live table of trials.

    ftjobs sweep create train.jsonl --validation-file valid.jsonl --model models/tiny \\
        --param hyperparameters.learning_rate=float:1e-5:1e-2:log --param method.r=choice:4,8,16 --n-trials 8 --watch
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from pydantic import BaseModel

from ftjobs.client.client import Client
from ftjobs.client.display import number, table
from ftjobs.client.models import FILE_ID_PATTERN, Task
from ftjobs.client.models.sweeps import Direction, Sampler, Sweep, SweepList

PARAM_HELP = (
    "NAME=SPEC, repeatable: NAME is hyperparameters.<field> or method.<field>; SPEC is float:LOW:HIGH[:log], "
    "int:LOW:HIGH[:STEP] or choice:V1,V2,..."
)


def add_parser(command: Callable[..., argparse.ArgumentParser]) -> None:
    """The `sweep` command and its actions, on the CLI's sub-parsers (`command` adds one)."""
    p = command("sweep", "hyperparameter sweeps: trials (jobs) sampled and pruned by optuna")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    c = actions.add_parser("create", help="start a sweep (prints its id; --watch shows the trials live)")
    c.add_argument("training_file", nargs="?", help="a file to upload or a file id (or give --body)")
    c.add_argument("--body", help="a JSON file with the whole request (POST /v1/sweeps); flags override it")
    c.add_argument("--validation-file", help="a file to upload or a file id: the trials are scored on it")
    c.add_argument("--model", help="the base model of every trial")
    c.add_argument("--task", choices=[t.value for t in Task])
    c.add_argument("--param", action="append", default=[], metavar="NAME=SPEC", help=PARAM_HELP)
    c.add_argument("--n-trials", type=int)
    c.add_argument("--parallelism", type=int)
    c.add_argument("--metric", help="a key of results.final: eval_loss (default), accuracy, f1 ...")
    c.add_argument("--direction", choices=[d.value for d in Direction])
    c.add_argument("--sampler", choices=[s.value for s in Sampler])
    c.add_argument("--watch", action="store_true", help="show the trials live until the sweep ends")
    actions.add_parser("list", help="list sweeps, newest first")
    s = actions.add_parser("show", help="a sweep's trials and best trial")
    s.add_argument("sweep")
    s.add_argument("--watch", action="store_true", help="refresh the table until the sweep ends")
    k = actions.add_parser("cancel", help="cancel a sweep and every trial still going")
    k.add_argument("sweep")


def run(args: argparse.Namespace, api: Client) -> int:
    if args.action == "create":
        sweep = api.sweeps.create(**create_body(args, api))
        if args.watch and not args.json:
            return watch(api, sweep.id, sys.stdout)
        if not _json(args, sweep):
            print(sweep.id)
    elif args.action == "list":
        page = api.sweeps.list(limit=100)
        if not _json(args, page):
            print(sweeps_table(page))
    elif args.action == "show":
        if args.watch and not args.json:
            return watch(api, args.sweep, sys.stdout)
        sweep = api.sweeps.get(args.sweep)
        if not _json(args, sweep):
            print(describe(sweep))
    else:
        sweep = api.sweeps.cancel(args.sweep)
        if not _json(args, sweep):
            stopping = sum(t.state.value in ("queued", "running") for t in sweep.trials)
            print(f"cancelled {sweep.id} ({stopping} trials stopping)")
    return 0


# ----------------------------------------------------------------------------- create


def create_body(args: argparse.Namespace, api: Client) -> dict[str, Any]:
    """The request from --body and the flags (which win); files are uploaded when given as paths."""
    body: dict[str, Any] = json.loads(Path(args.body).read_text()) if args.body else {}
    job = dict(body.get("job") or {})
    if args.training_file:
        job["training_file"] = _file_id(api, args.training_file)
    if args.validation_file:
        job["validation_file"] = _file_id(api, args.validation_file)
    for key, value in (("model", args.model), ("task", args.task)):
        if value is not None:
            job[key] = value
    space = dict(body.get("search_space") or {})
    space.update(parse_param(p) for p in args.param)
    options = {k: v for k, v in body.items() if k not in ("job", "search_space")}
    flags = {"n_trials": args.n_trials, "parallelism": args.parallelism, "metric": args.metric,
             "direction": args.direction, "sampler": args.sampler}  # fmt: skip
    options.update({k: v for k, v in flags.items() if v is not None})
    return {"job": job, "search_space": space, **options}


def parse_param(text: str) -> tuple[str, dict[str, Any]]:
    """`hyperparameters.learning_rate=float:1e-5:1e-2:log` -> (name, a FloatRange's JSON)."""
    name, sep, spec = text.partition("=")
    kind, _, rest = spec.partition(":")
    parts = rest.split(":")
    try:
        if not sep or not rest:
            raise ValueError
        if kind == "float":
            dist: dict[str, Any] = {"type": "float", "low": float(parts[0]), "high": float(parts[1])}
            dist["log"] = parts[2:] == ["log"]
        elif kind == "int":
            dist = {"type": "int", "low": int(parts[0]), "high": int(parts[1])}
            if len(parts) > 2:
                dist["step"] = int(parts[2])
        elif kind in ("choice", "categorical"):
            dist = {"type": "categorical", "values": [_scalar(v) for v in rest.split(",")]}
        else:
            raise ValueError
    except (ValueError, IndexError):
        raise SystemExit(f"ftjobs sweep create: error: --param {text!r}: expected {PARAM_HELP}") from None
    return name, dist


def _scalar(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def _file_id(api: Client, path_or_id: str) -> str:
    if re.fullmatch(FILE_ID_PATTERN, path_or_id) and not os.path.exists(path_or_id):
        return path_or_id
    return api.files.upload(path_or_id).id


# ----------------------------------------------------------------------------- tables


def trials_table(sweep: Sweep) -> str:
    """One row per trial: its number, state, the point it trained with, steps and the metric."""
    names = list(sweep.request.search_space)
    short = [n.split(".", 1)[1] for n in names]
    rows = []
    for t in sweep.trials:
        steps = f"{t.steps}/{t.total_steps}" if t.steps is not None and t.total_steps else t.steps
        mark = " *" if sweep.best is not None and sweep.best.number == t.number else ""
        state = t.state.value + (f"@{t.pruned_at_step}" if t.pruned_at_step is not None else "")
        rows.append([f"{t.number}{mark}", state, *(t.params.get(n) for n in names), steps, t.value, t.job_id])
    return table(["#", "state", *short, "steps", sweep.request.metric, "job"], rows)


def describe(sweep: Sweep) -> str:
    done = sum(t.state.value in ("complete", "pruned", "failed", "cancelled") for t in sweep.trials)
    head = (
        f"{sweep.id}  {sweep.status.value}  {done}/{sweep.request.n_trials} trials done  "
        f"{sweep.request.sampler.value}, {sweep.direction.value} {sweep.request.metric}"
    )
    lines = [head, trials_table(sweep) if sweep.trials else "(no trial started yet)"]
    if sweep.best is not None:
        lines.append(f"best: trial {sweep.best.number} ({sweep.best.job_id}) {sweep.request.metric} "
                     f"{number(sweep.best.value)} with {sweep.best.params}")  # fmt: skip
    elif sweep.message:
        lines.append(sweep.message)
    return "\n".join(lines)


def sweeps_table(page: SweepList) -> str:
    rows = [
        [s.id, s.status.value, f"{len(s.trials)}/{s.request.n_trials}", s.request.metric,
         s.best.value if s.best else None, time.strftime("%Y-%m-%d %H:%M", time.localtime(s.created_at))]
        for s in page.data
    ]  # fmt: skip
    return table(["id", "status", "trials", "metric", "best", "created"], rows)


def watch(api: Client, sweep_id: str, out: TextIO, interval_s: float = 2.0) -> int:
    """The sweep's table, refreshed until it ends: rich's live view on a terminal where rich is installed, else a
    new table whenever it changes. Exit status 0 when the sweep succeeded."""
    sweep = api.sweeps.get(sweep_id)
    live: Any = None
    if out.isatty():
        try:
            from rich.console import Console
            from rich.live import Live
            from rich.text import Text

            live = Live(Text(describe(sweep)), console=Console(file=out), auto_refresh=False)
            live.start()
        except ImportError:
            live = None
    shown = ""
    try:
        while True:
            text = describe(sweep)
            if live is not None:
                live.update(Text(text), refresh=True)
            elif text != shown:
                print(text + "\n", file=out, flush=True)
            shown = text
            if sweep.status.is_terminal:
                break
            time.sleep(interval_s)
            sweep = api.sweeps.get(sweep_id)
    finally:
        if live is not None:
            live.stop()
    return 0 if sweep.status.value == "succeeded" else 1


def _json(args: argparse.Namespace, value: BaseModel) -> bool:
    if getattr(args, "json", False):
        print(json.dumps(value.model_dump(mode="json"), indent=2))
        return True
    return False
