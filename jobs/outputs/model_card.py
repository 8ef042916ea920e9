"""The model card README.md in the Hugging Face format: YAML metadata (huggingface_hub's ModelCardData), then what
was trained on what and how (as resolved), how it scores before vs after (overall, per class, per group), the data
steps, the diagnostics in plain words, evaluation samples, and how to load the result."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from ftjobs.jobs.evaluation.diagnostics import summary as curve_summary
from ftjobs.jobs.outputs.card_loading import loading_snippet, weights_folders
from ftjobs.jobs.outputs.plots import LOSS_CURVE
from ftjobs.jobs.outputs.samples import EVAL_SAMPLES

MODEL_CARD = "README.md"
PIPELINE_TAGS = {  # the Hub's task names for ours
    "classification": "text-classification",
    "causal_lm": "text-generation",
    "seq2seq": "text2text-generation",
    "dpo": "text-generation",
}
CARD_SAMPLES = 5  # evaluation samples shown in the card; eval_samples.jsonl has them all
SAMPLE_CHARS = 160  # a sample's text cut to this many characters in the card
HIDDEN = frozenset({"model", "method", "labels", "auto_reasons", "request", "tenant"})  # shown in their own sections


def _fmt(value: Any) -> str:
    """A table cell: floats to 4 significant digits, None empty, lists comma-separated, pipes escaped."""
    if isinstance(value, float):
        text = f"{value:.4g}"
    elif isinstance(value, list | tuple):
        text = ", ".join(map(str, value))
    else:
        text = "" if value is None else str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def _cut(value: Any) -> str:
    text = _fmt(value)
    return text if len(text) <= SAMPLE_CHARS else text[: SAMPLE_CHARS - 1] + "…"


def metadata(
    job: dict[str, Any], data: dict[str, Any], results: dict[str, Any], method: dict[str, Any], title: str
) -> ModelCardData:
    """The card's YAML: base model (as the tenant names it), library, tags, data files, after-training results."""
    task, kind = str(job["task"]), str(method.get("type", job.get("method")))
    pipeline = PIPELINE_TAGS.get(task, "text-generation")
    peft = kind not in ("full", "adapter")  # bottleneck adapters load with ftjobs' own loader, on transformers
    validation = data.get("validation_file") or data.get("training_file")
    split = "validation" if data.get("validation_file") else "validation (held out from the training file)"
    final = results.get("final") or {}
    evals = [
        EvalResult(
            task_type=pipeline,
            dataset_type=str(validation),
            dataset_name=str(validation),
            dataset_split=split,
            metric_type=name.split("/")[0],
            metric_value=value,
            metric_name=name if "/" not in name else f"{name.split('/')[0]} ({name.split('/', 1)[1]})",
            metric_config=name.split("/", 1)[1] if "/" in name else None,
        )
        for name, value in final.items()
        if isinstance(value, int | float)
    ]
    files = [f for f in (data.get("training_file"), data.get("validation_file")) if f]
    return ModelCardData(
        base_model=str(job["model"]),
        library_name="peft" if peft else "transformers",
        pipeline_tag=pipeline,
        tags=["ftjobs", task, kind, *(["peft"] if peft else [])],
        datasets=files or None,
        model_name=title,
        eval_results=evals or None,
    )


def model_card(
    *,
    job: dict[str, Any],
    data: dict[str, Any],
    hyperparameters: dict[str, Any],
    results: dict[str, Any],
    weights_dir: str | None = None,
    method: dict[str, Any] | None = None,
    labels: Sequence[str] | None = None,
    history: dict[str, list[dict[str, Any]]] | None = None,
    samples: Sequence[dict[str, Any]] = (),
    metric: tuple[str, bool] = ("loss", False),
    files: Sequence[str] = (),
) -> str:
    """The card's Markdown: metadata, then each section. `hyperparameters` and `method`: the job's resolved values;
    `metric`: the task metric the job is judged on and whether higher is better (diagnostics.tracked_metric)."""
    method = method or {"type": job["method"]}
    title = str(job.get("suffix") or job["job_id"])
    folders = weights_folders(method) if weights_dir is None else [weights_dir]
    lines = [
        f"# {title}",
        "",
        f"Fine-tuned by ftjobs job `{job['job_id']}` (attempt {job.get('attempt', 1)}).",
        "",
        "| | |",
        "|---|---|",
        f"| base model | `{job['model']}` |",
        f"| task | {job['task']} |",
        f"| method | {method.get('type')} |",
        f"| weights | {', '.join(f'`{f}/`' for f in folders)} |",
        "",
        "## How to load",
        "",
        loading_snippet(str(job["task"]), method, str(job["model"]), labels),
        "",
        *_labels(labels),
        *_data(data, results.get("data")),
        "## Method (as resolved)",
        "",
        "| name | value |",
        "|---|---|",
        *(f"| {k} | {_fmt(v)} |" for k, v in sorted(method.items()) if v is not None and not isinstance(v, dict)),
        "",
        "## Hyperparameters (as resolved)",
        "",
        "| name | value |",
        "|---|---|",
        *(
            f"| {k} | {_fmt(v)} |"
            for k, v in sorted(hyperparameters.items())
            if k not in HIDDEN
            and v is not None
            and not isinstance(v, dict)
            and not (isinstance(v, list) and len(v) > 8)
        ),
        "",
        *_results(results, labels),
        *_diagnostics(results, history or {}, metric),
        *_samples(samples),
        "## Files",
        "",
        *(f"- `{name}`" for name in _file_list(files, folders, labels)),
        "",
    ]
    card = ModelCard(f"---\n{metadata(job, data, results, method, title).to_yaml()}\n---\n\n" + "\n".join(lines))
    return str(card.content)


def _labels(labels: Sequence[str] | None) -> list[str]:
    if not labels:
        return []
    rows = [f"| {i} | {_fmt(name)} |" for i, name in enumerate(labels)]
    return ["## Labels", "", "The class ids in order (`labels.json`):", "", "| id | label |", "|---|---|", *rows, ""]


def _data(data: dict[str, Any], report: dict[str, Any] | None) -> list[str]:
    lines = [
        "## Data",
        "",
        "| | file | examples |",
        "|---|---|---|",
        f"| training | `{data.get('training_file')}` | {data.get('n_train')} |",
        f"| validation | `{data.get('validation_file') or 'held out from training_file'}` "
        f"| {data.get('n_validation')} |",
        "",
    ]
    steps = (report or {}).get("steps") or []
    if steps:
        lines += ["Data steps, in order (`data_report.json` has every detail):", ""]
        lines += ["| step | rows in | rows out | details |", "|---|---|---|---|"]
        for s in steps:
            details = ", ".join(
                f"{k}={_fmt(v)}" for k, v in s.items() if k not in ("step", "rows_in", "rows_out") and _scalar(v)
            )
            lines.append(f"| {s.get('step')} | {s.get('rows_in')} | {s.get('rows_out')} | {details} |")
        lines.append("")
    return lines


def _scalar(value: Any) -> bool:
    return isinstance(value, str | int | float | bool) or value is None


def _results(results: dict[str, Any], labels: Sequence[str] | None) -> list[str]:
    lines = ["## Results", ""]
    baseline, final = results.get("baseline") or {}, results.get("final") or {}
    names = [k for k in final if "/" not in k] + [k for k in baseline if k not in final and "/" not in k]
    if not names:
        lines += ["No validation data, so no evaluation.", ""]
    else:
        lines += ["On the validation set (macro averages over the classes):" if labels else "On the validation set:"]
        lines += ["", "| metric | before training | after training |", "|---|---|---|"]
        lines += [f"| {k} | {_fmt(baseline.get(k))} | {_fmt(final.get(k))} |" for k in names]
        lines.append("")
    per_class = [name for name in (labels or []) if f"f1/{name}" in final]
    if per_class:
        lines += ["Per class:", "", "| label | " + " | ".join(f"{m} before | {m} after" for m in _CLASS_METRICS) + " |"]
        lines.append("|---|" + "---|---|" * len(_CLASS_METRICS))
        for name in per_class:
            cells = [f"{_fmt(baseline.get(f'{m}/{name}'))} | {_fmt(final.get(f'{m}/{name}'))}" for m in _CLASS_METRICS]
            lines.append(f"| {_fmt(name)} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += _groups(results.get("groups"))
    stop = results.get("early_stopping")
    if stop:
        lines += [
            f"Early stopping on `{stop.get('metric')}`: best {_fmt(stop.get('best_metric'))} at step "
            f"{stop.get('best_step')}, stopped at step {stop.get('stopped_at_step')}"
            f"{' (early)' if stop.get('stopped_early') else ''}; the weights of step {stop.get('best_step')} are kept.",
            "",
        ]
    lines += [
        f"Training: {results.get('steps')} steps in {_fmt(results.get('train_seconds'))} s, "
        f"train loss {_fmt(results.get('train_loss_first'))} -> {_fmt(results.get('train_loss_last'))}.",
        "",
    ]
    return lines


_CLASS_METRICS = ("f1", "precision", "recall")


def _groups(groups: dict[str, Any] | None) -> list[str]:
    if not groups:
        return []
    before, after = groups.get("baseline") or {}, groups.get("final") or {}
    per_before, per_after = before.get("per_group") or {}, after.get("per_group") or {}
    lines = [f"Per group (`{groups.get('field')}`):", ""]
    lines += ["| group | n | accuracy before | accuracy after | f1 before | f1 after |", "|---|---|---|---|---|---|"]
    for g, now in per_after.items():
        was = per_before.get(g) or {}
        lines.append(
            f"| {_fmt(g)} | {now.get('n')} | {_fmt(was.get('accuracy'))} | {_fmt(now.get('accuracy'))} "
            f"| {_fmt(was.get('f1'))} | {_fmt(now.get('f1'))} |"
        )
    gap_before, gap_after = before.get("gap") or {}, after.get("gap") or {}
    lines.append(
        f"| gap (best - worst) | | {_fmt(gap_before.get('accuracy'))} | {_fmt(gap_after.get('accuracy'))} "
        f"| {_fmt(gap_before.get('f1'))} | {_fmt(gap_after.get('f1'))} |"
    )
    return [*lines, ""]


def _diagnostics(
    results: dict[str, Any], history: dict[str, list[dict[str, Any]]], metric: tuple[str, bool]
) -> list[str]:
    lines = ["## Diagnostics", ""]
    flags = results.get("diagnostics") or []
    lines += [f"- **{f['flag']}**: {f['message']}" for f in flags]
    if not flags and (results.get("final") or history.get("train")):
        lines.append("- No overfitting or underfitting found in the curves.")
    said = curve_summary(history.get("eval", []), *metric)
    if said:
        lines.append(f"- {said}")
    forgot = results.get("forgetting")
    if forgot:
        lines.append(
            f"- Forgetting: the loss on the reference data went {_fmt(forgot.get('reference_loss_before'))} -> "
            f"{_fmt(forgot.get('reference_loss_after'))} ({_fmt(forgot.get('increase'))} higher after training)."
        )
    lines.append(f"- `{LOSS_CURVE}`: the train loss (raw and smoothed), the validation loss and {metric[0]}.")
    return [*lines, ""]


def _samples(samples: Sequence[dict[str, Any]]) -> list[str]:
    if not samples:
        return []
    columns = list(dict.fromkeys(k for s in samples[:CARD_SAMPLES] for k in s))
    lines = [f"## Evaluation samples (the first {min(len(samples), CARD_SAMPLES)}; all in `{EVAL_SAMPLES}`)", ""]
    lines += ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cut(s.get(c)) for c in columns) + " |" for s in samples[:CARD_SAMPLES]]
    return [*lines, ""]


def _file_list(files: Sequence[str], folders: Sequence[str], labels: Sequence[str] | None) -> list[str]:
    """The job's files: those already written, the weights, labels.json, metrics.json, this card, the manifest."""
    later = [f"{f}/" for f in folders] + (["labels.json"] if labels else []) + ["metrics.json", MODEL_CARD]
    return sorted({*files, *later}) + ["manifest.json (sizes and SHA-256 of every file)"]


def write_model_card(out: Path, **kwargs: Any) -> Path:
    """Write `model_card(**kwargs)` as README.md under `out`."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / MODEL_CARD
    path.write_text(model_card(**kwargs), encoding="utf-8")
    return path
