"""Jobs run end to end by a real `python -m ftjobs.jobs.worker` process on a real Redis, driven as the API would."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

from ftjobs.client.models import FullMethod, Hyperparameters, JobCreate, LoraMethod, Task
from ftjobs.core.keys import artifact_path, job_record_path, staging_dir
from tests.jobs.helpers import events, eventually, metric_points, store_root, submit, upload_rows, wait_for

COLOURS = {"sky": "blue", "grass": "green", "snow": "white", "the sun": "yellow", "a fox": "brown"}


def qa_rows(n: int) -> list[dict]:
    items = list(COLOURS.items())
    return [
        {
            "messages": [
                {"role": "user", "content": f"what is the colour of {thing} ?"},
                {"role": "assistant", "content": f"{thing} is {colour}"},
            ]
        }
        for thing, colour in (items[i % len(items)] for i in range(n))
    ]


def train_losses(redis, job_id: str) -> list[float]:
    return [p["values"]["loss"] for p in metric_points(redis, job_id) if p["split"] == "train"]


def mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def test_lora_causal_lm_succeeds_and_reloads(redis, env, worker, tiny_causal_lm: Path) -> None:
    request = JobCreate(
        model=str(tiny_causal_lm),
        training_file=upload_rows(env, qa_rows(40)),
        method=LoraMethod(r=8, alpha=16, dropout=0.0),
        hyperparameters=Hyperparameters(n_epochs=4, batch_size=4, learning_rate=1e-2, max_seq_length=64),
    )
    job_id = submit(redis, env, request)
    job = wait_for(redis, job_id, worker=worker)
    assert job["status"] == "succeeded", (job, worker.output()[-3000:])
    assert job["error"] is None and job["attempt"] == 1

    # What was resolved, and progress at the end.
    resolved = job["resolved"]
    assert resolved["learning_rate"] == 1e-2 and resolved["n_train"] == 36 and resolved["n_validation"] == 4
    assert resolved["total_steps"] == 36 and job["progress"]["step"] == 36
    assert job["progress"]["tokens_seen"] > 0

    # Train loss went down; baseline/final evaluation with perplexity at step 0 and at the end.
    losses = train_losses(redis, job_id)
    assert len(losses) >= 10
    assert mean(losses[-3:]) < mean(losses[:3])
    assert job["results"]["train_loss_first"] == losses[0] and job["results"]["train_loss_last"] == losses[-1]
    evals = [p for p in metric_points(redis, job_id) if p["split"] == "eval"]
    assert evals[0]["step"] == 0 and "perplexity" in evals[0]["values"]
    assert job["results"]["final"]["eval_loss"] < job["results"]["baseline"]["eval_loss"]
    assert "eval_loss" in job["last_metrics"] and "train_loss" in job["last_metrics"]

    # Events: running -> succeeded status events, metrics events, no tracebacks.
    evs = events(redis, job_id)
    assert [e["data"]["status"] for e in evs if e["type"] == "status"] == ["running", "succeeded"]
    assert any(e["type"] == "metrics" for e in evs)

    # Artifacts: listed, in place (staging gone), sha256 matching the stored bytes.
    store = store_root(env)
    names = {a["name"] for a in job["artifacts"]}
    assert {
        "adapter/adapter_model.safetensors",
        "adapter/adapter_config.json",
        "adapter/tokenizer.json",
        "metrics.json",
        "manifest.json",
    } <= names
    for a in job["artifacts"]:
        data = (store / artifact_path("default", job_id, a["name"])).read_bytes()
        assert len(data) == a["bytes"] and hashlib.sha256(data).hexdigest() == a["sha256"]
    manifest = json.loads((store / artifact_path("default", job_id, "manifest.json")).read_text())
    listed = [a for a in job["artifacts"] if a["name"] != "manifest.json"]
    assert manifest["files"] == [{k: a[k] for k in ("name", "bytes", "sha256")} for a in listed]
    assert not (store / staging_dir("default", job_id, 1)).exists()
    assert eventually((store / job_record_path("default", job_id)).is_file)  # written right after the status

    # The adapter reloads on the base model and generates.
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    adapter = store / artifact_path("default", job_id, "adapter")
    tokenizer = AutoTokenizer.from_pretrained(adapter)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_causal_lm), adapter)
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "what is the colour of snow ?"}],
        tokenize=False,
        add_generation_prompt=True,
    )
    inputs = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=6, do_sample=False)
    assert out.shape[1] > inputs["input_ids"].shape[1]
    print("generated:", tokenizer.decode(out[0, inputs["input_ids"].shape[1] :]))


def test_full_fine_tuning_succeeds_and_reloads(redis, env, worker, tiny_causal_lm: Path) -> None:
    rows = [{"text": f"the colour of {thing} is {colour}"} for thing, colour in COLOURS.items()] * 4
    request = JobCreate(
        model=str(tiny_causal_lm),
        training_file=upload_rows(env, rows),
        method=FullMethod(),
        hyperparameters=Hyperparameters(n_epochs=3, batch_size=4, learning_rate=1e-3, max_seq_length=32),
    )
    job_id = submit(redis, env, request)
    job = wait_for(redis, job_id, worker=worker)
    assert job["status"] == "succeeded", (job, worker.output()[-3000:])
    names = {a["name"] for a in job["artifacts"]}
    assert {"model/model.safetensors", "model/config.json", "model/tokenizer.json", "manifest.json"} <= names
    assert mean(train_losses(redis, job_id)[-3:]) < mean(train_losses(redis, job_id)[:3])

    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir = store_root(env) / artifact_path("default", job_id, "model")
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    out = model.generate(**tokenizer("the colour of", return_tensors="pt"), max_new_tokens=4, do_sample=False)
    assert out.shape[1] > 3


SPORTS = [
    "football",
    "tennis",
    "the marathon",
    "basketball",
    "the cup final",
    "cricket",
    "the race",
    "hockey",
]
COOKING = ["the soup", "a cake", "the pasta", "bread", "the curry", "a salad", "the roast", "pancakes"]


def topic_rows() -> list[dict]:
    sports = [
        "The team won {} after extra time.",
        "Fans cheered as the players scored in {}.",
        "The coach praised the athletes after {}.",
        "She trained all season for {}.",
    ]
    cooking = [
        "Stir {} slowly and add salt and pepper.",
        "Bake {} in the oven for twenty minutes.",
        "The chef chopped onions and garlic for {}.",
        "Simmer {} with butter and fresh herbs.",
    ]
    rows = []
    for i, (s, c) in enumerate(zip(SPORTS, COOKING, strict=True)):
        for j in range(4):
            rows.append({"text": sports[(i + j) % 4].format(s), "label": "sports"})
            rows.append({"text": cooking[(i + j) % 4].format(c), "label": "cooking"})
    return rows


def test_minilm_lora_classification_beats_baseline(redis, env, worker, minilm: Path) -> None:
    started = time.monotonic()
    request = JobCreate(
        model=str(minilm),
        task=Task.classification,
        training_file=upload_rows(env, topic_rows()),
        method=LoraMethod(r=8, alpha=16, dropout=0.0),
        hyperparameters=Hyperparameters(
            n_epochs=3, batch_size=8, learning_rate=2e-3, max_seq_length=32, validation_split=0.25
        ),
    )
    job_id = submit(redis, env, request)
    job = wait_for(redis, job_id, worker=worker, timeout=180)
    assert job["status"] == "succeeded", (job, worker.output()[-3000:])
    results = job["results"]
    assert job["resolved"]["labels"] == ["cooking", "sports"]
    assert results["final"]["f1"] > results["baseline"]["f1"]
    assert results["final"]["f1"] >= 0.8
    assert {"f1/sports", "precision/cooking", "accuracy"} <= set(results["final"])
    names = {a["name"] for a in job["artifacts"]}
    assert {"adapter/adapter_model.safetensors", "labels.json", "adapter/tokenizer.json"} <= names

    # The adapter (with its trained classifier head) reloads and classifies.
    import torch
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    adapter = store_root(env) / artifact_path("default", job_id, "adapter")
    base = AutoModelForSequenceClassification.from_pretrained(minilm, num_labels=2)
    model = PeftModel.from_pretrained(base, adapter).eval()
    tokenizer = AutoTokenizer.from_pretrained(adapter)
    with torch.no_grad():
        logits = model(
            **tokenizer(
                ["The players scored in the final.", "Bake the bread."], return_tensors="pt", padding=True
            )
        ).logits
    assert logits.argmax(-1).tolist() == [1, 0]  # labels.json: 0 cooking, 1 sports
    print(
        f"minilm job: {time.monotonic() - started:.1f} s, f1 {results['baseline']['f1']:.2f} -> "
        f"{results['final']['f1']:.2f}"
    )
