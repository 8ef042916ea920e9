"""The model card (README.md): Hugging Face metadata that matches the job's results, the resolved method, labels,
per-class and per-group tables, data steps, diagnostics, samples, and a loading snippet that really loads."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from ftjobs.client.models import DataOptions, Hyperparameters, JobCreate, LoraMethod, Task
from ftjobs.core import keys
from ftjobs.jobs.outputs.card_loading import loading_snippet, weights_folders
from ftjobs.jobs.outputs.model_card import model_card
from tests.jobs.helpers import store_root, upload_rows
from tests.jobs.test_safeguards import run_job


def front_matter(card: str) -> dict[str, Any]:
    """The YAML between the card's leading `---` lines."""
    match = re.match(r"^---\n(.*?)\n---\n", card, re.S)
    assert match, card[:200]
    return yaml.safe_load(match.group(1))


def table_row(card: str, first_cell: str) -> list[str]:
    """The cells of the first Markdown table row that starts with `first_cell`."""
    line = next(x for x in card.splitlines() if x.startswith(f"| {first_cell} |"))
    return [c.strip() for c in line.strip("|").split("|")]


def test_a_classification_jobs_card_matches_its_results(redis, env, monkeypatch, minilm: Path) -> None:  # type: ignore[no-untyped-def]
    texts = {"cooking": ["bake the bread", "stir the soup", "chop onions"], "sports": ["kick the ball", "run fast"]}
    rows = [
        {"text": f"{t} {i}", "label": label, "group": "ab"[i % 2]}
        for i in range(24)
        for label, ts in texts.items()
        for t in ts[i % len(ts) : i % len(ts) + 1]
    ]
    rows += rows[:6]  # exact duplicates: the dedup step reports rows in/out
    request = JobCreate(
        model=str(minilm),  # pretrained: it learns the two topics in a few steps
        task=Task.classification,
        training_file=upload_rows(env, rows),
        group_field="group",
        method=LoraMethod(r=4, alpha=8),  # target_modules left to peft: the card shows the resolved ones
        data=DataOptions(dedup="exact"),
        hyperparameters=Hyperparameters(n_epochs=2, batch_size=4, validation_split=0.3),
        eval_samples=4,
        suffix="cooking-or-sports",
    )
    job = run_job(redis, env, monkeypatch, request)
    assert job["status"] == "succeeded", job
    results, resolved = job["results"], job["resolved"]
    artifacts = store_root(env) / keys.artifact_path("default", job["id"], "")
    card = (artifacts / "README.md").read_text()

    # eval_steps null resolved to several evaluations an epoch, echoed in the record and on the curve
    per_epoch = resolved["total_steps"] // 2
    assert resolved["eval_strategy"] == "steps" and 1 <= resolved["eval_steps"] < per_epoch
    assert "eval_steps" in resolved["auto_reasons"]
    history = json.loads((artifacts / "metrics.json").read_text())["history"]
    trained = [h["step"] for h in history["eval"] if h["step"] > 0]
    assert len(trained) > 2 and all(s % resolved["eval_steps"] == 0 for s in trained[:-1])
    assert (artifacts / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # The metadata: base model as named under the root, peft, the data file, the final results in model-index form
    meta = front_matter(card)
    base = resolved["model"]  # the catalog name of the packaged model, no server path
    assert meta["base_model"] == base and not Path(base).is_absolute() and str(minilm) not in card
    assert meta["library_name"] == "peft" and meta["pipeline_tag"] == "text-classification"
    assert {"ftjobs", "classification", "lora"} <= set(meta["tags"])
    assert meta["datasets"] == [request.training_file]
    (index,) = meta["model-index"]
    assert index["name"] == "cooking-or-sports"
    scored = {
        m["type"] + (f"/{m['config']}" if m.get("config") else ""): m["value"] for m in index["results"][0]["metrics"]
    }
    assert scored == pytest.approx(results["final"])  # every after-training number, and only those

    # The resolved method (peft's target modules, not the request's blank), labels, per-class and per-group tables
    target = resolved["method"]["target_modules"]
    assert target and table_row(card, "target_modules")[1] == ", ".join(target)
    assert table_row(card, "eval_steps")[1] == str(resolved["eval_steps"])
    labels = json.loads((artifacts / "labels.json").read_text())
    assert [table_row(card, str(i))[1] for i in range(len(labels))] == list(labels.values()) == resolved["labels"]
    assert "- `labels.json`" in card and "- `data_report.json`" in card
    for name in labels.values():
        cells = table_row(card, name)  # label | f1 before | f1 after | precision before | ...
        assert float(cells[2]) == pytest.approx(results["final"][f"f1/{name}"], abs=5e-4)
        assert float(cells[1]) == pytest.approx(results["baseline"][f"f1/{name}"], abs=5e-4)
    for metric in ("accuracy", "f1", "eval_loss"):
        cells = table_row(card, metric)
        assert float(cells[1]) == pytest.approx(results["baseline"][metric], rel=1e-3)
        assert float(cells[2]) == pytest.approx(results["final"][metric], rel=1e-3)
    assert "Per group (`group`)" in card and table_row(card, "a")[1] == str(
        results["groups"]["final"]["per_group"]["a"]["n"]
    )
    (dedup,) = [s for s in results["data"]["steps"] if s["step"].startswith("dedup")]
    assert table_row(card, dedup["step"])[1:3] == [str(dedup["rows_in"]), str(dedup["rows_out"])]
    assert dedup["rows_out"] < dedup["rows_in"]
    assert "## Diagnostics" in card and "Validation f1 went" in card
    assert "## Evaluation samples (the first 4" in card

    # The snippet loads the adapter as written (the base from the model root) and predicts what the job predicted
    snippet = re.search(r"```python\n(.*?)```", card, re.S).group(1)  # type: ignore[union-attr]
    assert 'PeftModel.from_pretrained(base, "adapter")' in snippet
    monkeypatch.chdir(artifacts)
    scope: dict[str, Any] = {}
    exec(snippet.replace(f'"{base}"', repr(str(minilm))).split("\ninputs = ")[0], scope)
    samples = [json.loads(line) for line in (artifacts / "eval_samples.jsonl").read_text().splitlines()]
    inputs = scope["tokenizer"]([s["text"] for s in samples], return_tensors="pt", padding=True)
    predicted = scope["model"](**inputs).logits.argmax(-1).tolist()
    assert [scope["labels"][str(i)] for i in predicted] == [s["predicted_label"] for s in samples]
    assert results["final"]["accuracy"] > results["baseline"]["accuracy"]  # it learned: the predictions mean something


def test_cards_of_other_methods_say_how_to_load_them() -> None:
    full = {"type": "full"}
    merged = {"type": "lora", "r": 8, "merge": True, "target_modules": ["q_proj", "v_proj"]}
    bottleneck = {"type": "adapter", "reduction_factor": 16}
    assert weights_folders(full) == ["model"] and weights_folders(merged) == ["adapter", "model"]
    assert 'AutoModelForCausalLM.from_pretrained("model")' in loading_snippet("causal_lm", full, "tiny-llama", None)
    assert "merged" in loading_snippet("causal_lm", merged, "tiny-llama", None)
    assert "load_bottleneck_adapter(base, " in loading_snippet("seq2seq", bottleneck, "t5-small", None)
    card = model_card(
        job={"job_id": "ftjob-x", "model": "tiny-llama", "task": "causal_lm", "method": "lora"},
        data={"training_file": "file-a", "n_train": 9, "n_validation": 0},
        hyperparameters={"learning_rate": 2e-4},
        results={},
        method=merged,
    )
    meta = front_matter(card)
    assert meta["library_name"] == "peft" and meta["base_model"] == "tiny-llama" and "model-index" not in meta
    assert "| target_modules | q_proj, v_proj |" in card and "- `model/`" in card and "- `adapter/`" in card
