"""`ftjobs`: the command line over the Python client.

    ftjobs up                                   # Redis + API + a worker on this machine
    ftjobs submit train.jsonl --model /models/minilm --task classification --follow
    ftjobs status JOB  |  ftjobs logs JOB --follow  |  ftjobs download JOB --prefix adapter/
    ftjobs profile train.csv                    # upload (or name a file id) and print the dataset's profile

`--url` (or $FTJOBS_URL) picks the API, `--api-key` (or $FTJOBS_API_KEY) authenticates, `--json` prints
the API's JSON instead of tables. An API error prints `error: <code>: <message> (<param>)` on stderr
and exits 1. `up`, `worker` and `demo` import the service and worker code only when they run.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, get_args

from pydantic import BaseModel

from ftjobs.client.client import Client
from ftjobs.client.errors import APIError, FtjobsError
from ftjobs.client.models import (
    FILE_ID_PATTERN,
    Event,
    EventLevel,
    EventType,
    FileProfile,
    Job,
    JobStatus,
    LengthStats,
    Method,
    Task,
)

# --------------------------------------------------------------------------- formatting


def duration(seconds: float | None) -> str:
    """`75.2` -> `1m15s`; `None` -> `?`."""
    if seconds is None:
        return "?"
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def number(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def progress_line(job: Job, width: int = 24) -> str:
    """`[#########---------------] 45/113 steps  40%  epoch 1.20  ETA 32s`."""
    p = job.progress
    if p.total_steps:
        done = min(1.0, p.step / p.total_steps)
        bar = "#" * round(done * width) + "-" * (width - round(done * width))
        head = f"[{bar}] {p.step}/{p.total_steps} steps  {done:4.0%}"
    else:
        head = f"step {p.step}"
    eta = "" if job.status.is_terminal else f"  ETA {duration(p.eta_seconds)}"
    return f"{head}  epoch {p.epoch:.2f}  elapsed {duration(p.elapsed_seconds)}{eta}"


_NOT_VALUES = ("step", "total_steps", "epoch", "eta_seconds", "elapsed_seconds", "split", "grad_norm")
_SHORT = {"learning_rate": "lr"}


def format_event(event: Event, total_steps: int | None = None, eta_seconds: float | None = None) -> str:
    """One log line: time, level (unless info), message; metrics as `train step 4/114  loss 0.67  ETA 5m`.

    `total_steps` and `eta_seconds` come from the job's progress (events do not carry them).
    Per-class values (`f1/spam`) and grad_norm are left to `ftjobs metrics`.
    """
    stamp = time.strftime("%H:%M:%S", time.localtime(event.created_at))
    level = "" if event.level is EventLevel.info else f"{event.level.value.upper()} "
    data = event.data
    if event.type is not EventType.metrics or "step" not in data:
        return f"{stamp} {level}{event.message}"
    split = f"{data['split']} " if isinstance(data.get("split"), str) else ""
    total = total_steps or data.get("total_steps")
    parts = [f"{split}step {data['step']}" + (f"/{total}" if total else "")]
    if isinstance(data.get("epoch"), int | float):
        parts.append(f"epoch {data['epoch']:.2f}")
    nested = data.get("values")
    values: dict[str, Any] = nested if isinstance(nested, dict) else data
    parts += [
        f"{_SHORT.get(k, k)} {number(v)}"
        for k, v in values.items()
        if k not in _NOT_VALUES and "/" not in k and isinstance(v, int | float) and not isinstance(v, bool)
    ]
    eta = eta_seconds if eta_seconds is not None else data.get("eta_seconds")
    if eta is not None:
        parts.append(f"ETA {duration(eta)}")
    return f"{stamp} {level}{'  '.join(parts)}"


def follow_lines(api: Client, job_id: str, after: str | None = None) -> Iterator[str]:
    """`jobs.follow` as log lines; train metric lines get the job's step total and ETA."""
    for event in api.jobs.follow(job_id, after=after):
        if event.type is EventType.metrics and event.data.get("split", "train") == "train":
            progress = api.jobs.get(job_id).progress
            # An old event replayed from the backlog gets the total but not today's ETA.
            fresh = time.time() - event.created_at < 15
            yield format_event(event, progress.total_steps, progress.eta_seconds if fresh else None)
        else:
            yield format_event(event)


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [[number(c) if c is not None else "" for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells)
    return "\n".join(lines)


def results_table(results: dict[str, Any]) -> str | None:
    """Baseline (untrained) vs final (fine-tuned) metrics side by side, or None if the job has none."""
    baseline, final = (results.get(k) for k in ("baseline", "final"))
    baseline = baseline if isinstance(baseline, dict) else {}
    final = final if isinstance(final, dict) else {}
    both = {**baseline, **final}
    # The worker reports macro averages as `f1_macro` ...; accept the plain names too.
    preferred = [f"{m}{s}" for m in ("f1", "accuracy", "precision", "recall") for s in ("", "_macro")]
    keys = [k for k in preferred if k in both] + sorted(k for k in both if k.startswith("f1/"))
    if not keys:
        return None
    return table(["metric", "untrained", "fine-tuned"], [[k, baseline.get(k), final.get(k)] for k in keys])


def describe(job: Job) -> str:
    lines = [
        f"{job.id}  {job.status.value}" + (f"  (attempt {job.attempt})" if job.attempt > 1 else ""),
        f"  model     {job.model}  ({job.task.value}, {job.method.type})",
        f"  progress  {progress_line(job)}",
    ]
    if job.last_metrics:
        metrics = sorted((k, v) for k, v in job.last_metrics.items() if "/" not in k)  # per-class: `metrics`
        lines.append("  metrics   " + "  ".join(f"{k}={number(v)}" for k, v in metrics))
    if (summary := results_table(job.results)) is not None:
        lines += ["  results"] + [f"    {line}" for line in summary.splitlines()]
    for flag in job.results.get("diagnostics") or []:  # overfitting / underfitting, in plain words
        lines.append(f"  warning   {flag.get('flag')}: {flag.get('message')}")
    if job.error is not None:
        param = f" ({job.error.param})" if job.error.param else ""
        lines.append(f"  error     {job.error.code}: {job.error.message}{param}")
    if job.artifacts:
        lines.append(f"  artifacts {len(job.artifacts)} files (ftjobs download {job.id})")
    return "\n".join(lines)


MAX_LABELS_SHOWN = 20


def _spread(stats: LengthStats | None) -> str:
    """`2/7.5/15/15`: min/median/p95/max."""
    if stats is None:
        return ""
    return "/".join(number(v) if v != int(v) else str(int(v)) for v in (stats.min, stats.median, stats.p95, stats.max))


def describe_profile(profile: FileProfile) -> str:
    """A dataset profile for a human: shape, per-field lengths, label distribution, duplicates, notes."""
    lines = [
        f"{profile.file_id}  {profile.format.value}  {profile.rows} rows",
        f"  columns     {', '.join(profile.columns)}",
    ]
    fields = table(
        ["field", "empty", "missing", "chars min/median/p95/max", "words min/median/p95/max"],
        [[f.name, f.empty, f.missing, _spread(f.chars), _spread(f.words)] for f in profile.fields],
    )
    lines += ["  fields"] + [f"    {line}" for line in fields.splitlines()]
    if profile.labels is not None:
        shown = profile.labels[:MAX_LABELS_SHOWN]
        labels = table(["label", "rows", "share"], [[lab.label, lab.count, f"{lab.fraction:.1%}"] for lab in shown])
        lines += [f"  labels      {len(profile.labels)} distinct"] + [f"    {line}" for line in labels.splitlines()]
        if len(profile.labels) > len(shown):
            lines.append(f"    ... and {len(profile.labels) - len(shown)} more (--json lists them all)")
    duplicates = f"  duplicates  {profile.exact_duplicates} exact"
    if profile.duplicate_texts is not None:
        duplicates += f", {profile.duplicate_texts} repeated texts ({profile.conflicting_labels} with another label)"
    lines.append(duplicates)
    if profile.tokens:  # token lengths as recent jobs tokenized the file (their validation)
        tokens = table(
            ["job", "model", "examples", "tokens min/median/p95/max", "max_seq_length", "truncated"],
            [
                [
                    t.job_id,
                    "/".join(t.model.rstrip("/").split("/")[-2:]),  # enough of a path to tell models apart
                    t.examples,
                    "/".join(str(v) for v in (t.min, t.median, t.p95, t.max)),
                    t.max_seq_length,
                    t.truncated,
                ]
                for t in profile.tokens
            ],
        )
        lines += ["  tokens"] + [f"    {line}" for line in tokens.splitlines()]
    lines += [f"  note        {note}" for note in profile.notes]
    return "\n".join(lines)


def _emit(args: argparse.Namespace, value: BaseModel | list[BaseModel], text: Callable[[], str]) -> None:
    if args.json:
        if isinstance(value, list):
            print(json.dumps([v.model_dump(mode="json") for v in value], indent=2))
        else:
            print(value.model_dump_json(indent=2))
    else:
        print(text())


# Every `type` of the Method union: lora, full, ia3, prompt_tuning, prefix_tuning, p_tuning, adapter.
METHOD_TYPES = [m.model_fields["type"].default for m in get_args(get_args(Method)[0])]


def _note(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- commands


def cmd_submit(args: argparse.Namespace, api: Client) -> int:
    training = _file_id(api, args.training_file)
    validation = _file_id(api, args.validation_file) if args.validation_file else None
    lora = {
        k: v for k, v in (("r", args.lora_r), ("alpha", args.lora_alpha), ("quantize", args.quantize)) if v is not None
    }
    hp = {
        "n_epochs": args.epochs,
        "batch_size": args.batch_size,
        "learning_rate": args.learning_rate,
        "max_seq_length": args.max_seq_length,
        "max_steps": args.max_steps,
        "seed": args.seed,
    }
    job = api.jobs.create(
        model=args.model,
        training_file=training,
        validation_file=validation,
        task=args.task,
        method={"type": args.method, **lora},  # validated by the API, like everything else here
        parent_job_id=args.parent_job_id,
        hyperparameters={k: v for k, v in hp.items() if v is not None},
        suffix=args.suffix,
        idempotency_key=args.idempotency_key,
    )
    if not (args.wait or args.follow):
        _emit(args, job, lambda: job.id)
        return 0
    if not args.json:
        print(job.id, flush=True)
    if args.follow:
        for line in follow_lines(api, job.id):
            if not args.json:
                print(line, flush=True)
    job = api.jobs.wait(job.id)
    _emit(args, job, lambda: describe(job))
    return 0 if job.status is JobStatus.succeeded else 1


def _file_id(api: Client, path_or_id: str) -> str:
    """Upload a local file, or pass through an existing file id."""
    if re.fullmatch(FILE_ID_PATTERN, path_or_id) and not os.path.exists(path_or_id):
        return path_or_id
    uploaded = api.files.upload(path_or_id)
    _note(f"uploaded {path_or_id} -> {uploaded.id} ({uploaded.rows} rows, {uploaded.format.value})")
    for warning in uploaded.warnings:
        _note(f"  warning: {warning}")
    return uploaded.id


def cmd_profile(args: argparse.Namespace, api: Client) -> int:
    profile = api.files.profile(_file_id(api, args.file))
    _emit(args, profile, lambda: describe_profile(profile))
    return 0


def cmd_status(args: argparse.Namespace, api: Client) -> int:
    job = api.jobs.get(args.job)
    _emit(args, job, lambda: describe(job))
    return 0


def cmd_list(args: argparse.Namespace, api: Client) -> int:
    page = api.jobs.list(after=args.after, limit=args.limit, status=args.status)

    def render() -> str:
        rows = [
            [
                j.id,
                j.status.value,
                time.strftime("%Y-%m-%d %H:%M", time.localtime(j.created_at)),
                j.model if len(j.model) <= 40 else "..." + j.model[-37:],
                f"{j.progress.step}/{j.progress.total_steps}" if j.progress.total_steps else "",
            ]
            for j in page.data
        ]
        more = f"\n(more: --after {page.last_id})" if page.has_more and page.last_id else ""
        return table(["ID", "STATUS", "CREATED", "MODEL", "STEPS"], rows) + more

    _emit(args, page, render)
    return 0


def cmd_logs(args: argparse.Namespace, api: Client) -> int:
    if args.follow and not args.json:
        for line in follow_lines(api, args.job, args.after):
            print(line, flush=True)
        return 0
    events = (
        api.jobs.follow(args.job, after=args.after) if args.follow else _all_events(api, args.job, args.after)
    )
    total = None if args.json else api.jobs.get(args.job).progress.total_steps
    for event in events:
        print(event.model_dump_json() if args.json else format_event(event, total), flush=True)
    return 0


def _all_events(api: Client, job_id: str, after: str | None) -> Iterable[Event]:
    while True:
        page = api.jobs.events(job_id, after=after, limit=1000)
        yield from page.data
        if not (page.has_more and page.data):
            return
        after = page.data[-1].id


def cmd_metrics(args: argparse.Namespace, api: Client) -> int:
    points = [p for p in api.jobs.all_metrics(args.job) if args.split in (None, p.split)]

    def render() -> str:
        keys = sorted({k for p in points for k in p.values}, key=lambda k: (k != "loss", k))
        rows = [
            [p.step, p.split, None if p.epoch is None else f"{p.epoch:.2f}", *(p.values.get(k) for k in keys)]
            for p in points
        ]
        return table(["step", "split", "epoch", *keys], rows) if points else "no metrics yet"

    _emit(args, list(points), render)
    return 0


def cmd_download(args: argparse.Namespace, api: Client) -> int:
    dest = Path(args.dest or args.job)
    if args.name:
        paths = [api.jobs.download(args.job, args.name, dest)]
    else:
        paths = api.jobs.download_all(args.job, dest, prefix=args.prefix)
    if not paths:
        under = f" under {args.prefix}" if args.prefix else ""
        _note(f"error: no_artifacts: job {args.job} has no artifacts{under}")
        return 1
    if args.json:
        print(json.dumps([str(p) for p in paths], indent=2))
    else:
        print("\n".join(str(p) for p in paths))
    return 0


def cmd_cancel(args: argparse.Namespace, api: Client) -> int:
    job = api.jobs.cancel(args.job)
    pending = " (cancel requested; it stops within seconds)" if not job.status.is_terminal else ""
    _emit(args, job, lambda: f"{job.id}  {job.status.value}{pending}")
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    Stack = importlib.import_module("ftjobs.service.stack").Stack  # needs the service extra; only `up` loads it

    # A busy port or a part that fails to start raises StackError before anything says "up" (main prints it).
    with Stack(args.data_dir, port=args.port, host=args.host, workers=args.workers) as stack:
        _note(f"ftjobs is up at {stack.url}  (data in {stack.data_dir}; Ctrl-C to stop)")
        print(stack.url, flush=True)
        code = stack.run_until_stopped()  # restarts what dies; returns on Ctrl-C or SIGTERM
        _note(f"ftjobs: stopping (workers hand back running jobs, up to {stack.stop_timeout:g} s; Ctrl-C again: now)")
    return code


def cmd_worker(args: argparse.Namespace, rest: list[str]) -> int:
    worker = importlib.import_module("ftjobs.jobs.worker")  # the worker side: torch & co. stay out of other commands
    return int(worker.main(rest) or 0)


def cmd_demo(args: argparse.Namespace) -> int:
    run_demo = importlib.import_module("ftjobs.service.demo").run_demo  # starts a whole stack: service extra

    return run_demo(args.data_dir, epochs=args.epochs, learning_rate=args.learning_rate)


# --------------------------------------------------------------------------- parser


def _learning_rate(value: str) -> float | str:
    return value if value == "auto" else float(value)


def build_parser() -> argparse.ArgumentParser:
    # Global options work before or after the command: the sub-parsers' copies only set what was given.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", default=argparse.SUPPRESS, help="API base URL (default $FTJOBS_URL)")
    common.add_argument("--api-key", default=argparse.SUPPRESS, help="bearer key (default $FTJOBS_API_KEY)")
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print raw JSON")

    parser = argparse.ArgumentParser(prog="ftjobs", description="Fine-tune language models as jobs.")
    parser.add_argument(
        "--url", default=None, help="API base URL (default $FTJOBS_URL or http://127.0.0.1:8000)"
    )
    parser.add_argument("--api-key", default=None, help="bearer key (default $FTJOBS_API_KEY)")
    parser.add_argument("--json", action="store_true", default=False, help="print the API's JSON")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str, **kwargs: Any) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, description=help, parents=[common], **kwargs)

    p = command("submit", "upload data and submit a fine-tuning job (prints the job id)")
    p.add_argument("training_file", help="JSONL, CSV or Parquet file to upload, or an uploaded file id")
    p.add_argument("--validation-file", help="a file to upload or a file id for evaluation")
    p.add_argument("--model", required=True, help="base model path (under a configured model root)")
    p.add_argument("--task", choices=[t.value for t in Task], default=None, help="default: causal_lm")
    p.add_argument("--method", choices=METHOD_TYPES, default="lora", help="fine-tuning strategy (default: lora)")
    p.add_argument("--lora-r", type=int, help="LoRA rank")
    p.add_argument("--lora-alpha", type=int, help="LoRA alpha")
    p.add_argument("--quantize", choices=["4bit"], help="LoRA on a 4-bit base (QLoRA; bitsandbytes on the worker)")
    p.add_argument("--parent-job-id", help="continue training from this succeeded job's weights")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--learning-rate", type=_learning_rate, help="a float or 'auto'")
    p.add_argument("--max-seq-length", type=int)
    p.add_argument("--max-steps", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--suffix")
    p.add_argument("--idempotency-key", help="re-submitting with the same key returns the same job")
    p.add_argument("--wait", action="store_true", help="wait until the job ends; exit 1 unless it succeeded")
    p.add_argument("--follow", action="store_true", help="print the job's events until it ends (and --wait)")

    p = command("profile", "print a dataset's profile: rows, columns, lengths, labels, duplicates")
    p.add_argument("file", help="an uploaded file id, or a local JSONL/CSV/Parquet file to upload first")

    p = command("status", "show a job: status, progress, ETA, last metrics, results, error")
    p.add_argument("job")

    p = command("list", "list jobs, oldest first")
    p.add_argument("--status", choices=[s.value for s in JobStatus])
    p.add_argument("--after", help="job id to start after (pagination)")
    p.add_argument("--limit", type=int, default=20)

    p = command("logs", "print a job's events")
    p.add_argument("job")
    p.add_argument("--follow", "-f", action="store_true", help="keep printing until the job ends")
    p.add_argument("--after", help="event id to start after")

    p = command("metrics", "print a job's metric points as a table")
    p.add_argument("job")
    p.add_argument("--split", choices=["train", "eval"])

    p = command("download", "download a job's artifacts")
    p.add_argument("job")
    p.add_argument("--dest", help="folder to write to (default ./<job id>)")
    p.add_argument("--prefix", help="only artifacts whose name starts with this, e.g. adapter/")
    p.add_argument("--name", help="one artifact by name")

    p = command("cancel", "cancel a job")
    p.add_argument("job")

    p = command("up", "run Redis (embedded), the API and workers on this machine until Ctrl-C; restarts what dies")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--data-dir", default=".ftjobs")
    p.add_argument("--workers", type=int, default=1)

    sub.add_parser(
        "worker",
        help="run a worker process (arguments go to `python -m jobs.worker`, e.g. --queue Q)",
        add_help=False,
    )

    p = command("demo", "fine-tune MiniLM (LoRA) on SMS spam end to end and print untrained vs fine-tuned F1")
    p.add_argument("--data-dir", help="where the demo's stack keeps its data (default: a new temp folder)")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument(
        "--learning-rate", type=_learning_rate, default=2e-3, help="a float or 'auto' (default 2e-3)"
    )
    return parser


COMMANDS: dict[str, Callable[[argparse.Namespace, Client], int]] = {
    "submit": cmd_submit,
    "profile": cmd_profile,
    "status": cmd_status,
    "list": cmd_list,
    "logs": cmd_logs,
    "metrics": cmd_metrics,
    "download": cmd_download,
    "cancel": cmd_cancel,
}


def main(argv: Sequence[str] | None = None, *, client: Client | None = None) -> int:
    """Run one `ftjobs` command; returns the exit code. `client=` replaces the one built from --url."""
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if rest and args.command != "worker":
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    try:
        if args.command == "worker":
            return cmd_worker(args, rest)
        if args.command == "up":
            return cmd_up(args)
        if args.command == "demo":
            return cmd_demo(args)
        api = client or Client(base_url=args.url, api_key=args.api_key)
        try:
            return COMMANDS[args.command](args, api)
        finally:
            if client is None:
                api.close()
    except APIError as exc:
        param = f" ({exc.param})" if exc.param else ""
        _note(f"error: {exc.code}: {exc.message}{param}")
    except FtjobsError as exc:
        _note(f"error: {_snake(type(exc).__name__)}: {exc}")
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `ftjobs logs JOB | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except OSError as exc:
        _note(f"error: {_snake(type(exc).__name__)}: {exc}")
    return 1


def _snake(name: str) -> str:
    """`ChecksumMismatch` -> `checksum_mismatch`."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


if __name__ == "__main__":
    sys.exit(main())
