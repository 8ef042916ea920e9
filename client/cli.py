"""`ftjobs`: the command line over the Python client.

    ftjobs up                                   # Redis + API + a worker on this machine
    ftjobs submit train.jsonl --model /models/minilm --task classification --follow
    ftjobs status JOB  |  ftjobs logs JOB --follow  |  ftjobs wait JOB  |  ftjobs download JOB --prefix adapter/
    ftjobs profile train.csv                    # upload (or name a file id) and print the dataset's profile

`--url` (or $FTJOBS_URL) picks the API, `--api-key` (or $FTJOBS_API_KEY) authenticates, `--json` prints
the API's JSON instead of tables. An API error prints `error: <code>: <message> (<param>)` on stderr
and exits 1. `up` and `demo` import the launcher (`ftjobs.launch`), `worker` the worker (`ftjobs.jobs`), only
when they run; what the commands print is in client/display.py.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, get_args

from pydantic import BaseModel

from ftjobs.client import admin, annotate_commands, export_commands, monitor_commands, sweep_commands, webhook_commands
from ftjobs.client.cli_base import Parser, drop_stdout, flush_stdout, learning_rate, package_version
from ftjobs.client.client import Client
from ftjobs.client.completion import SHELLS, completion_script
from ftjobs.client.display import (
    describe,
    describe_profile,
    format_event,
    jobs_table,
    metrics_table,
    table,
    watch,
)
from ftjobs.client.errors import APIError, FtjobsError
from ftjobs.client.models import FILE_ID_PATTERN, JobStatus, Method, Task
from ftjobs.client.submit_flags import add_training_flags, hyperparameter_fields, resource_fields
from ftjobs.client.transfers import file_sha256, transfer_bars

# --------------------------------------------------------------------------- output


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
    job = api.jobs.create(
        model=args.model,
        training_file=training,
        validation_file=validation,
        task=args.task,
        method={"type": args.method, **lora},  # validated by the API, like everything else here
        parent_job_id=args.parent_job_id,
        hyperparameters=hyperparameter_fields(args),
        resources=resource_fields(args),
        suffix=args.suffix,
        idempotency_key=args.idempotency_key,
    )
    if not (args.wait or args.follow):
        _emit(args, job, lambda: job.id)
        return 0
    if not args.json:
        print(job.id, flush=True)
    return _until_done(args, api, job.id, lines=args.follow)


def _until_done(args: argparse.Namespace, api: Client, job_id: str, lines: bool) -> int:
    """Follow the job live (event lines if `lines`; a progress line on a terminal), then describe it with its
    results table; exit 0 only if it succeeded."""
    if args.json:
        job = api.jobs.wait(job_id)
    else:
        job = watch(api, job_id, lines=lines)
    _emit(args, job, lambda: describe(job))
    return 0 if job.status is JobStatus.succeeded else 1


def _file_id(api: Client, path_or_id: str) -> str:
    """Pass through a file id; for a local file, the id of an earlier upload of the same bytes (by sha256), or
    of a new upload (a progress bar on a terminal)."""
    if re.fullmatch(FILE_ID_PATTERN, path_or_id) and not os.path.exists(path_or_id):
        return path_or_id
    same = api.files.find(file_sha256(path_or_id))
    if same is not None:
        _note(f"reusing {same.id}: {path_or_id} was uploaded before ({same.rows} rows, {same.format})")
        return same.id
    bars = transfer_bars(sys.stderr, "uploading")
    try:
        uploaded = api.files.upload(path_or_id, progress=bars)
    finally:
        if bars is not None:
            bars.close()
    _note(f"uploaded {path_or_id} -> {uploaded.id} ({uploaded.rows} rows, {uploaded.format})")
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
    _emit(args, page, lambda: jobs_table(page))
    return 0


def cmd_models(args: argparse.Namespace, api: Client) -> int:
    models = api.models.list()
    none = "no base models under the server's model roots (FTJOBS_MODEL_ROOTS)"
    _emit(args, models, lambda: table(["MODEL"], [[m.id] for m in models.data]) if models.data else none)
    return 0


def cmd_logs(args: argparse.Namespace, api: Client) -> int:
    if args.follow and not args.json:
        watch(api, args.job, after=args.after)
        return 0
    total = None if args.json else api.jobs.get(args.job).progress.total_steps
    events = (api.jobs.stream_events if args.follow else api.jobs.all_events)(args.job, after=args.after)
    for event in events:
        print(event.model_dump_json() if args.json else format_event(event, total), flush=True)
    return 0


def cmd_wait(args: argparse.Namespace, api: Client) -> int:
    return _until_done(args, api, args.job, lines=args.events)


def cmd_metrics(args: argparse.Namespace, api: Client) -> int:
    points = [p for p in api.jobs.all_metrics(args.job) if args.split in (None, p.split)]
    _emit(args, list(points), lambda: metrics_table(points))
    return 0


def cmd_download(args: argparse.Namespace, api: Client) -> int:
    dest = Path(args.dest or args.job)
    bars = transfer_bars(sys.stderr, "downloading")  # None unless stderr is a terminal
    try:
        if args.name:
            paths = [api.jobs.download(args.job, args.name, dest, progress=bars)]
        else:
            paths = api.jobs.download_all(args.job, dest, prefix=args.prefix, progress=bars)
    finally:
        if bars is not None:
            bars.close()
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


def cmd_pause(args: argparse.Namespace, api: Client) -> int:
    job = api.jobs.pause(args.job)
    pending = " (pause requested; it checkpoints at its next step)" if job.status == JobStatus.running else ""
    _emit(args, job, lambda: f"{job.id}  {job.status.value}{pending}")
    return 0


def cmd_resume(args: argparse.Namespace, api: Client) -> int:
    job = api.jobs.resume(args.job)
    _emit(args, job, lambda: f"{job.id}  {job.status.value} (attempt {job.attempt}; continues from its checkpoint)")
    return 0


# --------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    # Global options work before or after the command: the sub-parsers' copies only set what was given.
    common = Parser(add_help=False)
    common.add_argument("--url", default=argparse.SUPPRESS, help="API base URL (default $FTJOBS_URL)")
    common.add_argument("--api-key", default=argparse.SUPPRESS, help="bearer key (default $FTJOBS_API_KEY)")
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print raw JSON")

    parser = Parser(prog="ftjobs", description="Fine-tune language models as jobs.")
    parser.add_argument("--version", action="version", version=f"ftjobs {package_version()}")
    parser.add_argument("--url", default=None, help="API base URL (default $FTJOBS_URL or http://127.0.0.1:8000)")
    parser.add_argument("--api-key", default=None, help="bearer key (default $FTJOBS_API_KEY)")
    parser.add_argument("--json", action="store_true", default=False, help="print the API's JSON")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str, **kwargs: Any) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, description=help, parents=[common], **kwargs)

    p = command("submit", "upload data and submit a fine-tuning job (prints the job id)")
    p.add_argument("training_file", help="JSONL, CSV or Parquet file to upload, or an uploaded file id")
    p.add_argument("--validation-file", help="a file to upload or a file id for evaluation")
    p.add_argument("--model", required=True, help="a name from `ftjobs models`, or a path under a model root")
    p.add_argument("--task", choices=[t.value for t in Task], default=None, help="default: causal_lm")
    p.add_argument("--method", choices=METHOD_TYPES, default="lora", help="fine-tuning strategy (default: lora)")
    p.add_argument("--lora-r", type=int, help="LoRA rank")
    p.add_argument("--lora-alpha", type=int, help="LoRA alpha")
    p.add_argument("--quantize", choices=["4bit"], help="LoRA on a 4-bit base (QLoRA; bitsandbytes on the worker)")
    p.add_argument("--parent-job-id", help="continue training from this succeeded job's weights")
    add_training_flags(p)  # hyperparameters and resources
    p.add_argument("--suffix")
    p.add_argument("--idempotency-key", help="re-submitting with the same key returns the same job")
    p.add_argument("--wait", action="store_true", help="wait until the job ends; exit 1 unless it succeeded")
    p.add_argument("--follow", action="store_true", help="print the job's events until it ends (and --wait)")

    p = command("profile", "print a dataset's profile: rows, columns, lengths, labels, duplicates")
    p.add_argument("file", help="an uploaded file id, or a local JSONL/CSV/Parquet file to upload first")

    command("models", "list the base models the server may fine-tune (names to pass as --model)")

    p = command("status", "show a job: status, progress, ETA, last metrics, results, error")
    p.add_argument("job")

    p = command("list", "list jobs, newest first")
    p.add_argument("--status", choices=[s.value for s in JobStatus])
    p.add_argument("--after", help="job id to start after (pagination)")
    p.add_argument("--limit", type=int, default=20)

    p = command("logs", "print a job's events")
    p.add_argument("job")
    p.add_argument("--follow", "-f", action="store_true", help="keep printing until the job ends")
    p.add_argument("--after", help="event id to start after")

    p = command("wait", "wait until a job ends (a progress line on a terminal); exit 1 unless it succeeded")
    p.add_argument("job")
    p.add_argument("--events", action="store_true", help="print its events meanwhile")

    p = command("metrics", "print a job's metric points as a table")
    p.add_argument("job")
    p.add_argument("--split", choices=["train", "eval"])

    p = command("download", "download a job's artifacts")
    p.add_argument("job")
    p.add_argument("--dest", help="folder to write to (default ./<job id>)")
    p.add_argument("--prefix", help="only artifacts under this prefix, written without it: adapter/ -> DEST/<file>")
    p.add_argument("--name", help="one artifact by name")

    p = command("cancel", "cancel a job")
    p.add_argument("job")

    p = command("pause", "pause a job: it checkpoints and frees its worker until resumed")
    p.add_argument("job")

    p = command("resume", "resume a paused job from its checkpoint")
    p.add_argument("job")

    for commands in (webhook_commands, monitor_commands, sweep_commands, export_commands, annotate_commands):
        commands.add_parser(command)

    p = command("completion", "print a shell completion script: eval \"$(ftjobs completion bash)\" in ~/.bashrc")
    p.add_argument("shell", choices=SHELLS)
    admin.add_parsers(command)

    p = command("up", "run Redis (embedded), the API and workers on this machine until Ctrl-C; restarts what dies")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--data-dir", default=".ftjobs")
    p.add_argument("--workers", type=int, default=1)

    sub.add_parser(
        "worker",
        help="run a worker process (arguments go to `python -m ftjobs.jobs.worker`, e.g. --queue Q)",
        add_help=False,
    )

    p = command("demo", "fine-tune MiniLM (LoRA) on SMS spam end to end and print untrained vs fine-tuned F1")
    p.add_argument("--data-dir", help="where the demo's stack keeps its data (default: a new temp folder)")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument(
        "--learning-rate", type=learning_rate, default=2e-3, help="a float or 'auto' (default 2e-3)"
    )
    return parser


COMMANDS: dict[str, Callable[[argparse.Namespace, Client], int]] = {
    "submit": cmd_submit,
    "profile": cmd_profile,
    "models": cmd_models,
    "status": cmd_status,
    "list": cmd_list,
    "logs": cmd_logs,
    "wait": cmd_wait,
    "metrics": cmd_metrics,
    "download": cmd_download,
    "cancel": cmd_cancel,
    "pause": cmd_pause,
    "resume": cmd_resume,
    "webhooks": webhook_commands.run,
    **monitor_commands.COMMANDS,
    "sweep": sweep_commands.run,
    **export_commands.COMMANDS,
    **annotate_commands.COMMANDS,
    "queue": admin.cmd_queue,
    "workers": admin.cmd_workers,
}


# Commands that start processes on this machine (`up`, `worker`, `demo`): parsed here, run by the launcher
# (`ftjobs.launch.cli`, the console script), so the client itself never imports the service or the worker.
LocalCommand = Callable[[argparse.Namespace, list[str]], int]
LOCAL_COMMANDS = ("up", "worker", "demo")


def main(
    argv: Sequence[str] | None = None,
    *,
    client: Client | None = None,
    local: Mapping[str, LocalCommand] | None = None,
) -> int:
    """Run one `ftjobs` command; returns the exit code. `client=` replaces the one built from --url."""
    parser = build_parser()
    try:
        args, rest = parser.parse_known_args(argv)
    except SystemExit:  # --help, --version, a usage error: printed; a closed pipe must not add a traceback
        flush_stdout()
        raise
    if rest and args.command != "worker":
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    try:
        if args.command == "completion":
            print(completion_script(parser, args.shell))
            return flush_stdout()
        if args.command in LOCAL_COMMANDS:
            run = (local or {}).get(args.command)
            if run is None:
                _note(f"error: `{args.command}` starts processes on this machine: run it as `ftjobs {args.command}`")
                return 2
            return run(args, rest)
        api = client or Client(base_url=args.url, api_key=args.api_key)
        try:
            return COMMANDS[args.command](args, api) | flush_stdout()  # a closed pipe shows here, not at exit
        finally:
            if client is None:
                api.close()
    except APIError as exc:
        param = f" ({exc.param})" if exc.param else ""
        _note(f"error: {exc.code}: {exc.message}{param}")
        if exc.request_id:
            _note(f"request id: {exc.request_id}")
    except FtjobsError as exc:
        return _failed(exc)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `ftjobs logs JOB | head`: the reader left; say nothing more, and it is no failure
        drop_stdout()
        return 0
    except OSError as exc:
        return _failed(exc)
    return 1


def _failed(exc: BaseException) -> int:
    """`error: <snake-cased class name>: <message>` on stderr; exit code 1."""
    _note(f"error: {_snake(type(exc).__name__)}: {exc}")
    return 1


def _snake(name: str) -> str:
    """`ChecksumMismatch` -> `checksum_mismatch`."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


if __name__ == "__main__":
    sys.exit(main())
