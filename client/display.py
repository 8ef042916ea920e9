"""What the CLI and the demo print: tables, a job's description, progress bars and event lines.

Pure formatting over the wire models, plus `follow_lines` (a job's events as log lines, through a `Client`) and
`watch` (a job followed live, with a progress line on a terminal).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, TextIO

from ftjobs.client.client import Client
from ftjobs.client.models import (
    Event,
    EventLevel,
    EventType,
    FileProfile,
    Job,
    JobList,
    LengthStats,
    MetricPoint,
)
from ftjobs.client.progress import Tracker, duration, live_view


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
    if p.phase in ("evaluating", "saving") and not job.status.is_terminal:  # the ETA is this phase's
        of = f"/{p.phase_total}" if p.phase_total else ""
        eta = f"  {p.phase} {p.phase_done or 0}{of} {p.phase_unit or ''}".rstrip() + eta
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


def event_line(event: Event, tracker: Tracker) -> str:
    """An event as a log line; a train metric line gets the job's step total and ETA (as the tracker last read them)."""
    if event.type is EventType.metrics and event.data.get("split", "train") == "train":
        # An old event replayed from the backlog gets the total but not today's ETA.
        fresh = time.time() - event.created_at < 15
        return format_event(event, tracker.total, tracker.eta_seconds if fresh else None)
    return format_event(event)


def follow_lines(api: Client, job_id: str, after: str | None = None) -> Iterator[str]:
    """`jobs.stream_events` as log lines, until the job ends; train metric lines get the job's step total and ETA."""
    tracker = Tracker()
    for event in api.jobs.stream_events(job_id, after=after):
        tracker.see(event)
        if event.type is EventType.metrics and event.data.get("split", "train") == "train":
            tracker.update(api.jobs.get(job_id))
        yield event_line(event, tracker)


def watch(api: Client, job_id: str, *, after: str | None = None, lines: bool = True, out: TextIO | None = None) -> Job:
    """Follow a job live until it ends (`ftjobs submit --follow`, `logs -f`, `wait`): its event lines (`lines`)
    and, on a terminal, a progress line under them (client/progress.py); returns the finished job."""
    tracker, view = Tracker(), live_view(out or sys.stdout)
    try:
        for event in api.jobs.stream_events(job_id, after=after):
            tracker.see(event)
            if tracker.wants_job(event):
                tracker.update(api.jobs.get(job_id))
            view.show(event_line(event, tracker) if lines else None, tracker)
    finally:
        view.close()
    return api.jobs.get(job_id)


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
    if profile.label_issues is not None:  # likely label errors (cleanlab), as the first classification job found
        found = profile.label_issues
        lines.append(f"  label issues  {found.found} of {found.rows} rows likely mislabeled (job {found.job_id})")
        issues = table(
            ["line", "label", "suggested", "score"],
            [[i.line, i.label, i.suggested, f"{i.score:.3f}"] for i in found.issues[:MAX_LABELS_SHOWN]],
        )
        lines += [f"    {line}" for line in issues.splitlines()] if found.issues else []
        if len(found.issues) > MAX_LABELS_SHOWN:
            lines.append(f"    ... and {len(found.issues) - MAX_LABELS_SHOWN} more (--json lists them)")
        lines += [f"    note: {note}" for note in found.notes]
    lines += [f"  note        {note}" for note in profile.notes]
    return "\n".join(lines)


def jobs_table(page: JobList) -> str:
    """`ftjobs list`: one row per job, and the `--after` to pass for the next page."""
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


def metrics_table(points: Sequence[MetricPoint]) -> str:
    """`ftjobs metrics`: one row per point, loss first, then the other values by name."""
    if not points:
        return "no metrics yet"
    keys = sorted({k for p in points for k in p.values}, key=lambda k: (k != "loss", k))
    rows = [
        [p.step, p.split, None if p.epoch is None else f"{p.epoch:.2f}", *(p.values.get(k) for k in keys)]
        for p in points
    ]
    return table(["step", "split", "epoch", *keys], rows)
