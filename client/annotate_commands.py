"""`ftjobs annotate create|list|get`: labeling functions over a file's rows, combined by a label model, from the
command line.

ftjobs annotate create sms.jsonl --labels ham,spam --keywords spam=prize,win,free --regex 'spam=\\b\\d{5}\\b' \\
    --keywords ham=lol,home,sorry --zero-shot 'ham=a chat between friends' --zero-shot 'spam=an advert' --wait
ftjobs annotate create file-... --labels ham,spam --functions functions.json --given-field known --wait
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ftjobs.client.annotations import Annotations
from ftjobs.client.client import Client
from ftjobs.client.display import table
from ftjobs.client.models.annotations import Annotation, AnnotationStatus


def add_parser(command: Callable[..., argparse.ArgumentParser]) -> None:
    """The `annotate` command and its actions, on the CLI's sub-parsers (`command` adds one)."""
    p = command("annotate", "label a file's rows with labeling functions combined by a label model (Snorkel)")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    c = actions.add_parser("create", help="start an annotation (a worker runs it); the labeled rows become a file")
    c.add_argument("file", help="a file id, or a local JSONL/CSV/Parquet file to upload first")
    c.add_argument("--labels", required=True, help="the classes, comma-separated (e.g. ham,spam)")
    c.add_argument("--functions", metavar="JSON", help="a JSON file: the list of labeling functions")
    c.add_argument("--keywords", action="append", default=[], metavar="LABEL=W1,W2", help="a keywords function")
    c.add_argument("--regex", action="append", default=[], metavar="LABEL=PATTERN", help="a regex function")
    c.add_argument("--zero-shot", action="append", default=[], metavar="LABEL=DESCRIPTION",
                   help="a label's description for one zero-shot function (give one per label)")  # fmt: skip
    c.add_argument("--zero-shot-model", help="the zero-shot encoder under the model roots (default all-MiniLM-L6-v2)")
    c.add_argument("--text-field", help="the rows' text field (default text)")
    c.add_argument("--label-field", help="where the label is written (default label)")
    c.add_argument("--given-field", help="where known labels are (default the label field)")
    c.add_argument("--wait", action="store_true", help="wait until it succeeded or failed")
    c.add_argument("--timeout", type=float, default=None, help="with --wait: give up after this many seconds")
    actions.add_parser("list", help="the tenant's annotations, newest first")
    g = actions.add_parser("get", help="one annotation: status, each function's stats, the label model")
    g.add_argument("annotation")


def functions_from(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The labeling functions: --functions' JSON list, then --keywords/--regex, then one zero-shot function."""
    found: list[dict[str, Any]] = json.loads(Path(args.functions).read_text()) if args.functions else []
    for spec in args.keywords:
        label, words = _split(spec, "--keywords")
        found.append({"type": "keywords", "label": label, "keywords": [w for w in words.split(",") if w.strip()]})
    for spec in args.regex:
        label, pattern = _split(spec, "--regex")
        found.append({"type": "regex", "label": label, "pattern": pattern})
    if args.zero_shot:
        zero_shot: dict[str, Any] = {"type": "zero_shot", "descriptions": dict(_split(s, "--zero-shot") for s in
                                                                             args.zero_shot)}  # fmt: skip
        if args.zero_shot_model:
            zero_shot["model"] = args.zero_shot_model
        found.append(zero_shot)
    if not found:
        raise SystemExit("give the labeling functions: --functions, --keywords, --regex or --zero-shot")
    return found


def _split(spec: str, flag: str) -> tuple[str, str]:
    label, sep, rest = spec.partition("=")
    if not sep or not label or not rest:
        raise SystemExit(f"{flag} {spec!r}: expected LABEL=...")
    return label, rest


def run(args: argparse.Namespace, api: Client) -> int:
    annotations = Annotations(api)
    if args.action == "create":
        file_id = args.file
        if not file_id.startswith("file-") and Path(file_id).is_file():
            file_id = api.files.upload(file_id).id
        options = {"text_field": args.text_field, "label_field": args.label_field, "given_field": args.given_field}
        labels = [label.strip() for label in args.labels.split(",") if label.strip()]
        annotation = annotations.create(file_id, labels=labels, functions=functions_from(args), **options)
        if args.wait:
            annotation = annotations.wait(annotation.id, timeout=args.timeout)
        if not _json(args, annotation):
            show(annotation)
        return 1 if annotation.status is AnnotationStatus.failed else 0
    if args.action == "list":
        listed = annotations.list()
        if not _json(args, listed):
            rows = [(a.id, a.file_id, a.status.value, len(a.functions), a.output_file_id or "-") for a in listed.data]
            print(table(["id", "file", "status", "functions", "labeled file"], rows))
        return 0
    annotation = annotations.get(args.annotation)
    if not _json(args, annotation):
        show(annotation)
    return 0


def show(a: Annotation) -> None:
    print(f"{a.id}  {a.status.value}  file {a.file_id} -> {a.output_file_id or '-'}")
    if a.function_stats:
        rows = [(s.name, s.type, ",".join(s.polarity), f"{s.coverage:.3f}", f"{s.overlaps:.3f}", f"{s.conflicts:.3f}",
                 "-" if s.accuracy is None else f"{s.accuracy:.3f}") for s in a.function_stats]  # fmt: skip
        print(table(["function", "type", "polarity", "coverage", "overlaps", "conflicts", "accuracy"], rows))
    if (m := a.label_model) is not None:
        scored = "" if m.accuracy is None else f"; on the given labels {m.accuracy:.3f} (majority vote " \
            f"{m.majority_vote_accuracy:.3f})"  # fmt: skip
        print(f"{m.method}: {m.labeled} rows labeled, {m.given} given, {m.abstained} left out (no vote); coverage "
              f"{m.coverage:.3f}{scored}; labels {m.class_balance}")  # fmt: skip
    if a.error is not None:
        print(f"error ({a.error.code}): {a.error.message}", file=sys.stderr)


def _json(args: argparse.Namespace, value: Any) -> bool:
    if getattr(args, "json", False):
        print(json.dumps(value.model_dump(mode="json"), indent=2))
        return True
    return False


COMMANDS: dict[str, Callable[[argparse.Namespace, Client], int]] = {"annotate": run}
