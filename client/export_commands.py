"""`ftjobs export create|list|get|download`: a succeeded job's weights exported for serving, from the command line.

ftjobs export create ftjob-... --format gguf --quantization q8_0 --wait --download served/
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable

from pydantic import BaseModel

from ftjobs.client.client import Client
from ftjobs.client.display import table
from ftjobs.client.models.exports import Export, ExportDtype, ExportFormat, ExportStatus, GGUFQuantization


def add_parser(command: Callable[..., argparse.ArgumentParser]) -> None:
    """The `export` command and its actions, on the CLI's sub-parsers (`command` adds one)."""
    p = command("export", "export a succeeded job for serving: merged safetensors, GGUF (llama.cpp/Ollama), vLLM")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    c = actions.add_parser("create", help="start an export (a worker writes and checks it)")
    c.add_argument("job")
    c.add_argument("--format", required=True, choices=[f.value for f in ExportFormat])
    c.add_argument("--dtype", choices=[d.value for d in ExportDtype], help="safetensors: fp16 (default), bf16, f32")
    c.add_argument("--quantization", choices=[q.value for q in GGUFQuantization], help="gguf: f16 (default), q8_0")
    c.add_argument("--name", help="vllm: the served adapter's name (default: the job's suffix or id)")
    c.add_argument("--wait", action="store_true", help="wait until it succeeded or failed")
    c.add_argument("--timeout", type=float, default=None, help="with --wait: give up after this many seconds")
    c.add_argument("--download", metavar="DIR", help="with --wait: then download its files into DIR")
    ls = actions.add_parser("list", help="a job's exports")
    ls.add_argument("job")
    g = actions.add_parser("get", help="one export: status, files, checks, events")
    g.add_argument("job")
    g.add_argument("export")
    d = actions.add_parser("download", help="every file of a succeeded export (sha256-checked)")
    d.add_argument("job")
    d.add_argument("export")
    d.add_argument("--dest", help="folder to write to (default ./<export id>)")


def run(args: argparse.Namespace, api: Client) -> int:
    if args.action == "create":
        export = api.exports.create(args.job, format=args.format, dtype=args.dtype, quantization=args.quantization,
                                    name=args.name)  # fmt: skip
        if args.wait or args.download:
            export = api.exports.wait(args.job, export.id, timeout=args.timeout)
        if not _json(args, export):
            _show(export)
        if export.status is ExportStatus.failed:
            return 1
        if args.download and export.status is ExportStatus.succeeded:
            for path in api.exports.download(args.job, export.id, args.download):
                print(path)
    elif args.action == "list":
        exports = api.exports.list(args.job)
        if not _json(args, exports):
            rows = [(e.id, e.format.value, (e.dtype or e.quantization or "-"), e.status.value, len(e.files))
                    for e in exports.data]  # fmt: skip
            print(table(["id", "format", "type", "status", "files"], rows))
    elif args.action == "get":
        export = api.exports.get(args.job, args.export)
        if not _json(args, export):
            _show(export)
    else:
        for path in api.exports.download(args.job, args.export, args.dest or args.export):
            print(path)
    return 0


def _show(export: Export) -> None:
    option = export.dtype or export.quantization
    print(f"{export.id}  {export.format.value}{f' ({option})' if option else ''}  {export.status.value}")
    for f in export.files:
        print(f"  {f.name}  {f.bytes} bytes  sha256 {f.sha256[:16]}")
    if export.error is not None:
        print(f"error ({export.error.code}): {export.error.message}", file=sys.stderr)


def _json(args: argparse.Namespace, value: BaseModel) -> bool:
    if getattr(args, "json", False):
        print(json.dumps(value.model_dump(mode="json"), indent=2))
        return True
    return False


COMMANDS: dict[str, Callable[[argparse.Namespace, Client], int]] = {"export": run}
