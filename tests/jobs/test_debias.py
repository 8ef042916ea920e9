"""Debiasing across groups (jobs/training/debias.py): the losses, a job that reports worst group and gap, 4xx."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from ftjobs.client.models import DataOptions, Hyperparameters, JobCreate, LoraMethod, Task
from ftjobs.jobs.data.read import Row
from ftjobs.jobs.training.debias import GROUP_KEY, attach
from tests.jobs.helpers import create_job, events, read_job, upload_rows
from tests.tiny_models import build_tiny_bert


def rows_of(groups: list[str]) -> list[Row]:
    return [Row(i + 1, {"text": f"t{i}", "label": "x", "group": g}, "training_file") for i, g in enumerate(groups)]


def test_group_balance_weights_each_group_by_its_inverse_frequency() -> None:
    groups = ["a"] * 6 + ["b"] * 2
    examples: list[dict] = [{} for _ in groups]
    loss = attach(DataOptions(debias="group_balance"), "group", rows_of(groups), examples)
    assert loss is not None and [e[GROUP_KEY] for e in examples] == [0] * 6 + [1] * 2
    n, counts = len(groups), {"a": 6, "b": 2}
    expected = {g: n / (2 * c) for g, c in counts.items()}
    assert loss.report()["weights"] == pytest.approx(expected) and loss.report()["train_counts"] == counts
    per_example, ids = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0, 0, 1])
    weighted = (1.0 * expected["a"] + 2.0 * expected["a"] + 3.0 * expected["b"]) / 3
    assert loss(per_example, ids).item() == pytest.approx(weighted)
    assert attach(DataOptions(), "group", rows_of(groups), examples) is None


def test_group_dro_moves_weight_to_the_group_with_the_higher_loss() -> None:
    loss = attach(DataOptions(debias="group_dro", group_dro_step_size=0.5), "group", rows_of(["a", "b"]), [{}, {}])
    assert loss is not None
    per_example, ids = torch.tensor([0.2, 0.4, 1.5], requires_grad=True), torch.tensor([0, 0, 1])
    value = loss(per_example, ids)
    q = loss.log_q.exp().tolist()
    group_loss = torch.tensor([0.3, 1.5])
    expected_q = torch.softmax(0.5 * group_loss, 0)  # from uniform: q_g proportional to exp(step * loss_g)
    assert q == pytest.approx(expected_q.tolist()) and q[1] > q[0]
    assert value.item() == pytest.approx(float((expected_q * group_loss).sum()))
    value.backward()  # the weights are constants: the gradient of each example is its group's weight / its size
    assert per_example.grad is not None
    assert per_example.grad.tolist() == pytest.approx([q[0] / 2, q[0] / 2, q[1]])
    assert set(loss.report()["final_weights"]) == {"a", "b"}


def test_a_job_with_group_dro_reports_worst_group_and_gap(  # type: ignore[no-untyped-def]
    redis, env, monkeypatch, model_root: Path
) -> None:
    from ftjobs.jobs.train import run

    bert = build_tiny_bert(model_root / "tiny-bert")
    rows = [
        {"text": f"{word} {i}", "label": label, "group": "a" if i % 4 else "b"}
        for i in range(24)
        for word, label in (("bake the bread", "cooking"), ("kick the ball", "sports"))
    ]
    request = JobCreate(
        model=str(bert),
        task=Task.classification,
        training_file=upload_rows(env, rows),
        group_field="group",
        method=LoraMethod(r=4, alpha=8, target_modules=["query", "value"]),
        hyperparameters=Hyperparameters(max_steps=3, batch_size=8, validation_split=0.25),
        data=DataOptions(debias="group_dro", group_dro_step_size=0.1),
        eval_generation_limit=0,
    )
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    job_id = create_job(redis, request)
    run({"job_id": job_id, "tenant": "default", "attempt": 1})
    job = read_job(redis, job_id)
    assert job["status"] == "succeeded", (job, events(redis, job_id)[-5:])
    groups = job["results"]["groups"]
    for stage in ("baseline", "final"):
        per = groups[stage]["per_group"]
        assert set(per) == {"a", "b"}
        assert groups[stage]["worst"]["accuracy"] == min(g["accuracy"] for g in per.values())
    for key in ("worst", "gap"):
        for metric in ("accuracy", "f1"):
            change = groups["final"][key][metric] - groups["baseline"][key][metric]
            assert groups["change"][key][metric] == pytest.approx(change)
    debias = groups["debias"]
    assert debias["method"] == "group_dro" and debias["step_size"] == 0.1
    assert sum(debias["train_counts"].values()) == job["resolved"]["n_train"]
    assert math.isclose(sum(debias["final_weights"].values()), 1.0, rel_tol=1e-5)
    assert len(set(debias["final_weights"].values())) == 2  # trained with it: the weights left uniform


def test_debias_and_drop_label_issues_are_refused_where_they_cannot_apply(http) -> None:  # type: ignore[no-untyped-def]
    base = {"model": "tiny-bert", "training_file": "file-" + "1" * 20, "task": "classification"}

    def refused(body: dict, param: str, words: str) -> None:
        response = http.post("/v1/jobs", json={**base, **body})
        assert response.status_code == 422, response.text
        error = response.json()["error"]
        assert error["code"] == "validation_error" and error["param"] == param and words in error["message"], error

    refused({"data": {"debias": "group_dro"}}, "data", "group_field")
    causal = {"task": "causal_lm", "data": {"debias": "group_balance"}, "group_field": None}
    refused(causal, "data", "classification")
    refused({"task": "causal_lm", "data": {"drop_label_issues": True}}, "data", "classification only")
    refused({"data": {"group_dro_step_size": 0.5}}, "data.group_dro_step_size", "group_dro only")
    replay = {"group_field": "group", "data": {"debias": "group_balance"}, "hyperparameters": {"replay_ratio": 0.5}}
    refused({**replay, "reference_file": "file-" + "2" * 20}, "data", "replay_ratio")
    refused({"data": {"debias": "reweight"}}, "data.debias", "")
