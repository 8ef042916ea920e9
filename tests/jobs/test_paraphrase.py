"""Model-based augmentation (paraphrase, back_translate) with the tiny causal LM and the tiny T5."""

from __future__ import annotations

from pathlib import Path

import pytest

from ftjobs.client.models import DataOptions, Hyperparameters, JobCreate, LoraMethod, Task
from ftjobs.jobs.data.paraphrase import Generator, rewrite_rows
from ftjobs.jobs.data.prepare import prepare_data
from ftjobs.jobs.data.read import Row
from ftjobs.jobs.errors import ModelNotFound
from tests.jobs.helpers import submit, upload_rows, wait_for
from tests.tiny_models import build_tiny_t5

C = Task.classification
WORDS = "the quick brown fox jumps over the lazy dog sky is blue grass green snow white".split()


def rows(n: int) -> list[Row]:
    return [
        Row(i, {"text": " ".join(WORDS[(i + k) % len(WORDS)] for k in range(4 + i % 3)), "label": "ab"[i % 2]}, "t")
        for i in range(1, n + 1)
    ]


@pytest.fixture(scope="module")
def tiny_t5(model_root: Path) -> Path:
    return build_tiny_t5(model_root / "tiny-t5")


def paraphrase(model: Path, roots: tuple[Path, ...], seed: int = 0, **options):  # type: ignore[no-untyped-def]
    data = DataOptions(augment=["paraphrase"], augment_model=model.name, augment_max_rows=5, **options)
    return prepare_data(C, data, rows(20), None, 0.25, seed, roots)


# The random tiny T5 greedily decodes only padding (empty: all dropped), so it samples here.
@pytest.mark.parametrize(("model", "temperature"), [("tiny_causal_lm", 0.0), ("tiny_t5", 1.0)])
def test_paraphrase_adds_at_most_max_rows_to_training_only(
    model: str, temperature: float, request, model_root: Path
) -> None:  # type: ignore[no-untyped-def]
    path = request.getfixturevalue(model)
    plain = prepare_data(C, DataOptions(dedup="exact"), rows(20), None, 0.25, 0)
    prepared = paraphrase(path, (model_root,), augment_temperature=temperature)
    step = next(s for s in prepared.report["steps"] if s["step"] == "paraphrase")
    # The split is the one made without augmentation; only training grows, by what the report says.
    assert [r.data for r in prepared.validation] == [r.data for r in plain.validation]
    added = len(prepared.train) - len(plain.train)
    assert 0 < added <= 5 and step["rows_added"] == added and step["rows_out"] - step["rows_in"] == added
    assert step["rows_tried"] == 5 and step["models"] == [path.name]
    new = prepared.train[len(plain.train) :]
    originals = {r.data["text"] for r in plain.train}
    validation = {r.data["text"] for r in prepared.validation}
    assert all(r.data["text"] not in originals | validation and r.data["text"].strip() for r in new)
    # Each new row is a rewritten training row with its label kept.
    by_line = {r.line: r for r in plain.train}
    assert all(r.line in by_line and r.data["label"] == by_line[r.line].data["label"] for r in new)
    # Deterministic for one seed; another seed samples other rows (and splits differently).
    again = paraphrase(path, (model_root,), augment_temperature=temperature)
    assert [r.data for r in again.train] == [r.data for r in prepared.train]
    other = paraphrase(path, (model_root,), seed=1, augment_temperature=temperature)
    assert [r.data for r in other.train] != [r.data for r in prepared.train]


def test_sampling_is_seeded(tiny_causal_lm: Path) -> None:
    texts = ["the sky is blue", "grass is green"]
    with Generator(tiny_causal_lm, "Paraphrase: {text}\nParaphrase:", 1.0, seed=1) as g:
        a, b = g(texts), g(texts)
    with Generator(tiny_causal_lm, "Paraphrase: {text}\nParaphrase:", 1.0, seed=2) as g:
        c = g(texts)
    assert a == b and a != c


def test_rewrite_rows_drops_empty_and_identical_outputs() -> None:
    train = rows(6)
    outputs = {1: "", 2: None, 3: "changed"}  # index -> output; None: the input itself

    def fake_model(texts):  # type: ignore[no-untyped-def]
        return [t if outputs.get(i % 3 + 1) is None else outputs[i % 3 + 1] for i, t in enumerate(texts)]

    new, details = rewrite_rows(train, [fake_model], max_rows=6, seed=0)
    assert details == {"rows_tried": 6, "texts": 6, "empty": 2, "identical": 2}
    assert [r.data["text"] for r in new] == ["changed", "changed"]
    capped, details = rewrite_rows(train, [fake_model], max_rows=2, seed=0)
    assert details["rows_tried"] == 2 and len(capped) <= 2


def test_back_translate_chains_two_models(tiny_causal_lm: Path, tiny_t5: Path, model_root: Path) -> None:
    data = DataOptions(
        augment=["back_translate"],
        augment_model=tiny_t5.name,
        augment_back_model=tiny_causal_lm.name,
        augment_max_rows=3,
        augment_temperature=1.0,
    )
    prepared = prepare_data(C, data, rows(12), None, 0.25, 0, (model_root,))
    step = next(s for s in prepared.report["steps"] if s["step"] == "back_translate")
    assert step["models"] == [tiny_t5.name, tiny_causal_lm.name] and step["rows_tried"] == 3
    assert len(prepared.train) == 9 + step["rows_added"] and 0 < step["rows_added"] <= 3


def test_a_missing_augment_model_names_its_field(model_root: Path) -> None:
    data = DataOptions(augment=["paraphrase"], augment_model="no-such-model")
    with pytest.raises(ModelNotFound) as e:
        prepare_data(C, data, rows(8), None, 0.25, 0, (model_root,))
    assert e.value.param == "data.augment_model" and "no-such-model" in e.value.message


def test_a_job_paraphrases_its_training_split(redis, env, worker, tiny_causal_lm: Path) -> None:  # type: ignore[no-untyped-def]
    data = [{"text": " ".join(WORDS[i % len(WORDS) : i % len(WORDS) + 5])} for i in range(16)]
    request = JobCreate(
        model=str(tiny_causal_lm),
        training_file=upload_rows(env, data),
        method=LoraMethod(r=4, alpha=8, dropout=0.0),
        hyperparameters=Hyperparameters(max_steps=1, batch_size=4, max_seq_length=32, validation_split=0.25),
        data=DataOptions(augment=["paraphrase"], augment_model=tiny_causal_lm.name, augment_max_rows=4),
        eval_generation_limit=0,
    )
    job = wait_for(redis, submit(redis, env, request), worker=worker, timeout=180)
    assert job["status"] == "succeeded", (job, worker.output()[-3000:])
    report = job["results"]["data"]
    assert [s["step"] for s in report["steps"]] == ["split", "paraphrase"]
    added = report["steps"][1]["rows_added"]
    assert 0 < added <= 4 and job["resolved"]["n_train"] == 12 + added and job["resolved"]["n_validation"] == 4

    # A generator model that is not under a model root fails the job, naming the field.
    missing = DataOptions(augment=["paraphrase"], augment_model="no-such-model")
    job = wait_for(redis, submit(redis, env, request.model_copy(update={"data": missing})), worker=worker, timeout=60)
    assert job["status"] == "failed" and job["error"]["code"] == "model_not_found", job["error"]
    assert job["error"]["param"] == "data.augment_model"
