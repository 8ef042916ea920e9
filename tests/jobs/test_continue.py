"""parent_job_id: a job continues from a finished job's weights (API checks, worker end to end)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ftjobs.client.models import AdapterMethod, Hyperparameters, Job, JobCreate, JobStatus, LoraMethod, Task
from ftjobs.jobs.data.read import Row
from ftjobs.jobs.errors import DataError, InvalidMethod
from ftjobs.jobs.training import adapters
from ftjobs.jobs.training.continuation import Parent, attach, check_labels
from tests.jobs.helpers import create_job, upload_rows
from tests.jobs.test_safeguards import COLOURS, qa, run_job
from tests.service.conftest import ROWS, assert_error, jsonl, upload
from tests.tiny_models import build_tiny_bert


@pytest.mark.parametrize(
    "method",
    [{"type": "lora", "r": 8}, {"type": "ia3"}, {"type": "adapter"}, {"type": "full"}],
    ids=lambda m: m["type"],
)
def test_child_starts_from_the_parents_weights(redis, env, monkeypatch, tiny_causal_lm: Path, method) -> None:  # type: ignore[no-untyped-def]
    train, valid = upload_rows(env, qa(32, COLOURS)), upload_rows(env, qa(12, COLOURS, offset=1))

    def request(**kw) -> JobCreate:  # type: ignore[no-untyped-def]
        return JobCreate(
            model=str(tiny_causal_lm),
            training_file=train,
            validation_file=valid,
            method=method,
            eval_generation_limit=0,
            eval_samples=0,
            hyperparameters=Hyperparameters(n_epochs=2, batch_size=8, learning_rate=5e-3),
            **kw,
        )

    parent = run_job(redis, env, monkeypatch, request())
    assert parent["status"] == "succeeded", parent
    child = run_job(redis, env, monkeypatch, request(parent_job_id=parent["id"]))
    assert child["status"] == "succeeded", child
    before, after = parent["results"]["baseline"]["eval_loss"], parent["results"]["final"]["eval_loss"]
    start = child["results"]["baseline"]["eval_loss"]
    print(f"parent baseline {before:.4f} -> final {after:.4f}; child baseline {start:.4f}")
    assert after < before
    assert start == pytest.approx(after, rel=1e-4)  # the child evaluates the parent's trained weights first
    assert child["resolved"]["parent_job_id"] == parent["id"]
    assert child["resolved"]["model"] == tiny_causal_lm.name  # the base model stays the base (relative to its root)
    assert any(e["message"] == f"continuing from {parent['id']}" for e in child["events"])


def test_classification_reuses_the_parents_labels(redis, env, monkeypatch, model_root: Path) -> None:  # type: ignore[no-untyped-def]
    bert = build_tiny_bert(model_root / "tiny-bert")
    rows = [{"text": f"{t} {i}", "label": label} for i in range(12) for label, t in (("a", "bake"), ("b", "kick"))]
    rows += [{"text": f"stir {i}", "label": "c"} for i in range(12)]

    def request(train: list[dict], **kw) -> JobCreate:  # type: ignore[no-untyped-def]
        method = LoraMethod(r=4, target_modules=["query", "value"])
        hp = Hyperparameters(n_epochs=1, batch_size=8, validation_split=0.25)
        return JobCreate(
            model=str(bert),
            task=Task.classification,
            training_file=upload_rows(env, train),
            method=method,
            hyperparameters=hp,
            **kw,
        )

    parent = run_job(redis, env, monkeypatch, request(rows))
    assert parent["status"] == "succeeded", parent
    # only labels b and c: on its own it would be ["b", "c"]; continued, it keeps the parent's head and order
    child = run_job(
        redis, env, monkeypatch, request([r for r in rows if r["label"] != "a"], parent_job_id=parent["id"])
    )
    assert child["status"] == "succeeded", child
    assert child["resolved"]["labels"] == ["a", "b", "c"]
    extra = [*rows, *({"text": f"swim {i}", "label": "d"} for i in range(4))]
    failed = run_job(redis, env, monkeypatch, request(extra, parent_job_id=parent["id"]))
    assert failed["status"] == "failed"
    assert failed["error"]["code"] == "invalid_data" and "'d'" in failed["error"]["message"], failed["error"]


def test_new_labels_the_parent_lacks_are_invalid_data(tmp_path: Path) -> None:
    parent = Parent("ftjob-" + "0" * 20, tmp_path, ["ham", "spam"])
    check_labels(parent, [Row(1, {"text": "a", "label": "spam"}, "training_file")])
    with pytest.raises(DataError) as e:
        check_labels(parent, [Row(1, {"text": "a", "label": "eggs"}, "training_file")])
    assert e.value.code == "invalid_data" and "'eggs'" in e.value.message


def test_api_checks_the_parent(http, redis, model_root: Path) -> None:  # type: ignore[no-untyped-def]
    file_id = upload(http, jsonl(ROWS["prompt_completion"] * 4)).json()["id"]
    body = {"model": str(model_root / "tiny"), "training_file": file_id}

    unknown = http.post("/v1/jobs", json={**body, "parent_job_id": "ftjob-" + "a" * 20})
    assert_error(unknown, 404, "job_not_found", "parent_job_id")
    assert_error(
        http.post("/v1/jobs", json={**body, "parent_job_id": "nope"}), 422, "validation_error", "parent_job_id"
    )

    queued = http.post("/v1/jobs", json=body).json()["id"]  # no worker: it stays queued
    assert_error(
        http.post("/v1/jobs", json={**body, "parent_job_id": queued}), 409, "parent_job_not_succeeded", "parent_job_id"
    )

    full = create_job(
        redis, JobCreate(model=body["model"], training_file=file_id, method={"type": "full"}), status="succeeded"
    )
    mismatch = http.post("/v1/jobs", json={**body, "parent_job_id": full})
    assert_error(mismatch, 422, "incompatible_parent_job", "parent_job_id")
    ok = create_job(redis, JobCreate(model=body["model"], training_file=file_id), status="succeeded")
    created = http.post("/v1/jobs", json={**body, "parent_job_id": ok})
    assert created.status_code == 201, created.text
    assert created.json()["parent_job_id"] == ok


def test_child_changes_a_training_setting_and_keeps_the_parents_shape(  # type: ignore[no-untyped-def]
    redis, env, monkeypatch, client, http, worker, tiny_causal_lm, tmp_path
):
    (tmp_path / "train.jsonl").write_bytes(jsonl(qa(32, COLOURS)))
    (tmp_path / "valid.jsonl").write_bytes(jsonl(qa(12, COLOURS, offset=1)))
    train, valid = client.files.upload(tmp_path / "train.jsonl"), client.files.upload(tmp_path / "valid.jsonl")
    common: dict[str, Any] = {
        "model": str(tiny_causal_lm),
        "training_file": train.id,
        "validation_file": valid.id,
        "eval_generation_limit": 0,
        "eval_samples": 0,
        "hyperparameters": {"n_epochs": 2, "batch_size": 8, "learning_rate": 5e-3},
    }
    # The parent runs in this process (faster); the child goes through the API and the worker.
    lora = {"type": "lora", "r": 4, "alpha": 8, "dropout": 0.0}
    parent_id = run_job(redis, env, monkeypatch, JobCreate.model_validate({**common, "method": lora}))["id"]
    parent = client.jobs.get(parent_id)
    assert parent.status == JobStatus.succeeded, parent.error
    assert parent.resolved_hyperparameters["method"]["target_modules"] == ["q_proj", "v_proj"]  # peft's pick

    # only the dropout changes; r, alpha and target_modules are left out: they are the parent's
    method = {"type": "lora", "dropout": 0.3}
    created = http.post("/v1/jobs", json={**common, "method": method, "parent_job_id": parent_id})
    assert created.status_code == 201, created.text
    child = Job.model_validate(created.json())
    assert (child.method.r, child.method.alpha, child.method.dropout) == (4, 8, 0.3)
    child = client.jobs.wait(child.id, timeout=120)
    assert child.status == JobStatus.succeeded, (child.error, worker.output()[-3000:])
    config = json.loads(client.jobs.download(child.id, "adapter/adapter_config.json", tmp_path / "c.json").read_text())
    assert (config["r"], config["lora_alpha"], sorted(config["target_modules"])) == (4, 8, ["q_proj", "v_proj"])
    assert config["lora_dropout"] == 0.3  # the child's training setting took effect
    assert child.results["baseline"]["eval_loss"] == pytest.approx(parent.results["final"]["eval_loss"], rel=1e-4)
    assert child.resolved_hyperparameters["method"]["dropout"] == 0.3


def test_attach_checks_the_shape_and_applies_the_childs_dropout(tiny_causal_lm: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    from ftjobs.jobs.training.methods import apply_method

    base = AutoModelForCausalLM.from_pretrained(tiny_causal_lm)
    apply_method(base, LoraMethod(r=4, dropout=0.0), Task.causal_lm).save_pretrained(tmp_path / "lora")
    parent = Parent("ftjob-" + "0" * 20, tmp_path / "lora", None)

    model = attach(AutoModelForCausalLM.from_pretrained(tiny_causal_lm), LoraMethod(r=4, dropout=0.25), parent)
    dropouts = {m.p for name, m in model.named_modules() if name.endswith("lora_dropout.default")}
    assert dropouts == {0.25}
    assert any(p.requires_grad for name, p in model.named_parameters() if "lora_A" in name)
    with pytest.raises(InvalidMethod) as e:  # a request that bypassed the API's check
        attach(AutoModelForCausalLM.from_pretrained(tiny_causal_lm), LoraMethod(r=8), parent)
    assert e.value.param == "method.r" and "'s r=4" in e.value.message

    base = AutoModelForCausalLM.from_pretrained(tiny_causal_lm)
    base = apply_method(base, AdapterMethod(bottleneck_size=4), Task.causal_lm)
    adapters.save_bottleneck_adapter(base, tmp_path / "adapter", base.ftjobs_bottleneck_config)
    parent = Parent(parent.job_id, tmp_path / "adapter", None)
    model = attach(AutoModelForCausalLM.from_pretrained(tiny_causal_lm), AdapterMethod(dropout=0.1), parent)
    assert {m.dropout.p for m in model.modules() if isinstance(m, adapters.BottleneckAdapter)} == {0.1}
    with pytest.raises(InvalidMethod) as e:
        attach(AutoModelForCausalLM.from_pretrained(tiny_causal_lm), AdapterMethod(bottleneck_size=8), parent)
    assert e.value.param == "method.bottleneck_size"


def test_a_child_measures_forgetting_on_the_parents_data_and_ewc_reduces_it(  # type: ignore[no-untyped-def]
    redis, env, monkeypatch, tiny_causal_lm: Path
) -> None:
    """No reference_file: a continued job's reference is what its parent trained on (forgetting, EWC)."""
    task_b = upload_rows(env, qa(24, {k: "purple" for k in COLOURS}))  # the same prompts, another answer

    def request(training_file: str, **kw: Any) -> JobCreate:
        hp = {"n_epochs": 4, "batch_size": 8, "learning_rate": 3e-3, "lr_scheduler": "constant", **kw.pop("hp", {})}
        return JobCreate(
            model=str(tiny_causal_lm),
            training_file=training_file,
            method={"type": "full"},
            eval_generation_limit=0,
            hyperparameters=Hyperparameters(validation_split=0.0, **hp),
            **kw,
        )

    parent = run_job(redis, env, monkeypatch, request(upload_rows(env, qa(24, COLOURS)), hp={"n_epochs": 8}))
    assert parent["status"] == "succeeded", parent
    assert "forgetting" not in parent["results"]  # nothing to compare with: no reference, no parent

    increases = {}
    for ewc in (0.0, 10.0):
        child = run_job(redis, env, monkeypatch, request(task_b, parent_job_id=parent["id"], hp={"ewc_lambda": ewc}))
        assert child["status"] == "succeeded", child
        resolved, forgetting = child["resolved"], child["results"]["forgetting"]
        assert resolved["reference"] == f"parent {parent['id']}'s training data" and resolved["n_reference"] == 24
        assert any(e["message"].startswith("forgetting: measured on 24 examples") for e in child["events"])
        increases[ewc] = forgetting["increase"]
    print(f"loss increase on the parent's data: without EWC {increases[0.0]:.3f}, with EWC {increases[10.0]:.3f}")
    assert increases[0.0] > 0.5 and increases[10.0] < 0.6 * increases[0.0]


def test_ewc_on_a_parent_whose_data_is_gone_names_reference_file(  # type: ignore[no-untyped-def]
    env, tmp_path: Path
) -> None:
    from ftjobs.core.storage import Storage
    from ftjobs.jobs.training.continuation import parent_rows
    from ftjobs.jobs.training.safeguards import InvalidRequest

    store = Storage(f"file://{tmp_path / 'store'}")
    gone = Parent("ftjob-" + "e" * 20, tmp_path, None, training_file="file-" + "f" * 20)
    assert parent_rows(store, "default", gone, Hyperparameters(), tmp_path) is None  # forgetting is just skipped
    with pytest.raises(InvalidRequest) as e:
        parent_rows(store, "default", gone, Hyperparameters(ewc_lambda=1.0), tmp_path)
    assert e.value.param == "reference_file" and "no longer in the store" in e.value.message
