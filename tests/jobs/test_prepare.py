"""Data preparation (jobs/data/): each step on hand-made rows, the real SMS spam file, and one job end to end."""

from __future__ import annotations

import json
import random
import time
from collections import Counter
from pathlib import Path

import pytest
from pydantic import ValidationError

from ftjobs.client.models import DataOptions, Hyperparameters, JobCreate, LoraMethod, Task
from ftjobs.core.keys import artifact_path, file_path
from ftjobs.core.storage import Storage
from ftjobs.jobs.data.augment import eda, swap_terms
from ftjobs.jobs.data.clean import dedup_minhash, near_key, normalize_text, shingles
from ftjobs.jobs.data.prepare import first_half_key, prepare_data, prepare_job_data, prepared_dir, token_report
from ftjobs.jobs.data.read import Row
from ftjobs.jobs.data.split import split_rows
from ftjobs.jobs.errors import DataError
from tests.jobs.helpers import events, store_root, submit, upload_rows, wait_for

SMS_SPAM = Path(__file__).resolve().parents[3] / "shared" / "data" / "sms_spam" / "sms_spam.jsonl"
C = Task.classification


def rows(*data: dict) -> list[Row]:  # type: ignore[type-arg]
    return [Row(i, d, "training_file") for i, d in enumerate(data, start=1)]


def step(report: dict, name: str) -> dict:  # type: ignore[type-arg]
    return next(s for s in report["steps"] if s["step"] == name)


def test_default_options_change_nothing() -> None:
    train = rows({"text": "a", "label": "x"}, {"text": "a", "label": "x"})
    prepared = prepare_data(C, DataOptions(), train, None, 0.5, 0)
    assert prepared.train is train and prepared.validation is None and prepared.report == {}


def test_cleaning_steps_report_rows_in_and_out() -> None:
    train = rows(
        {"text": "Ｗin  a\tprize", "label": "Spam"},
        {"text": "Win a prize", "label": "spam "},  # same after NFKC + whitespace, label variant
        {"text": "win a prize!!", "label": "spam"},  # near duplicate
        {"text": "", "label": "ham"},  # invalid
        {"text": "x" * 50, "label": "ham"},  # too long
        {"text": "see you", "label": "ham"},
        {"text": "see you", "label": "spam"},  # conflicting with the row above
        {"text": "call me", "label": "ham"},
    )
    options = DataOptions(
        normalize_text=True,
        drop_invalid=True,
        max_chars=40,
        normalize_labels=True,
        dedup="near",
        drop_conflicting=True,
    )
    prepared = prepare_data(C, options, train, [], 0.0, 0)
    report = prepared.report
    assert [(s["step"], s["rows_in"], s["rows_out"]) for s in report["steps"]] == [
        ("normalize_text", 8, 8),
        ("drop_invalid", 8, 7),
        ("length_filter", 7, 6),
        ("normalize_labels", 6, 6),
        ("dedup_exact", 6, 5),
        ("dedup_near", 5, 4),
        ("drop_conflicting", 4, 2),
    ]
    assert step(report, "drop_invalid")["lines"] == [4]
    assert step(report, "normalize_labels")["merged"] == {"spam": ["Spam", "spam"]}
    assert [r.data for r in prepared.train] == [
        {"text": "Win a prize", "label": "spam"},
        {"text": "call me", "label": "ham"},
    ]
    assert report["labels_before"] == {"Spam": 1, "spam ": 1, "spam": 2, "ham": 4}


def test_drop_invalid_keeps_good_seq2seq_rows() -> None:
    data = rows(
        {"source": "a", "target": "b"}, {"source": "c", "target": " "}, {"source": "d"}, {"source": "e", "target": "f"}
    )
    report = prepare_data(Task.seq2seq, DataOptions(drop_invalid=True), data, None, 0.0, 1).report
    assert (step(report, "drop_invalid")["rows_in"], step(report, "drop_invalid")["rows_out"]) == (4, 2)


def test_text_helpers() -> None:
    assert normalize_text(" ﬁve\u00a0 ① ") == "five 1"
    assert near_key("Hello, World! 42") == near_key("hello world") == "helloworld"
    assert swap_terms("He gave HIS book to her brother.", [("he", "she"), ("his", "her"), ("brother", "sister")]) == (
        "She gave HER book to his sister."
    )
    words = "the quick brown fox jumps over the lazy dog".split()
    variants = {eda(" ".join(words), random.Random(s), 0.2) for s in range(20)}
    assert len(variants) > 5  # seeded but varied
    assert all(set(v.split()) <= set(words) for v in variants)  # swap/delete/insert reuse the sentence's words
    assert eda("one two three", random.Random(1), 0.3) == eda("one two three", random.Random(1), 0.3)


def test_split_comes_first_and_augmented_rows_stay_in_training() -> None:
    train = rows(*({"text": f"he said {i} things to his brother", "label": "a" if i % 3 else "b"} for i in range(60)))
    options = DataOptions(augment=["eda", "swap_terms"], augment_copies=2, balance="oversample")
    prepared = prepare_data(C, options, train, None, 0.2, 7)
    assert prepared.validation is not None
    val_lines = {r.line for r in prepared.validation}
    assert val_lines.isdisjoint(r.line for r in prepared.train)  # no copy of a validation row is trained on
    assert all("he said" in r.data["text"] for r in prepared.validation)  # validation rows are untouched
    # the same split as without any option
    _, plain_val, _ = split_rows(train, 0.2, 7, [r.data["label"] for r in train])
    assert [r.line for r in prepared.validation] == [r.line for r in plain_val]
    augment = step(prepared.report, "augment")
    assert augment["rows_out"] == augment["rows_in"] * 4  # 2 EDA copies + 1 counterfactual per row
    assert any("she said" in r.data["text"] for r in prepared.train)
    balance = step(prepared.report, "balance_oversample")
    assert len(set(balance["after"].values())) == 1 and len(set(balance["before"].values())) == 2
    again = prepare_data(C, options, train, None, 0.2, 7)
    assert [r.data for r in again.train] == [r.data for r in prepared.train]  # seeded


def test_undersample_and_class_weights() -> None:
    train = rows(*({"text": f"t{i}", "label": "a" if i < 30 else "b"} for i in range(40)))
    under = prepare_data(C, DataOptions(balance="undersample"), train, [], 0.0, 0)
    assert Counter(r.data["label"] for r in under.train) == {"a": 10, "b": 10}
    weighted = prepare_data(C, DataOptions(balance="class_weights"), train, [], 0.0, 0)
    assert len(weighted.train) == 40 and weighted.class_weights == {"a": round(40 / 60, 6), "b": 2.0}


def test_sft_rows_augment_inputs_only() -> None:
    chat = {
        "messages": [{"role": "user", "content": "tell him the plan now"}, {"role": "assistant", "content": "he knows"}]
    }
    prepared = prepare_data(Task.causal_lm, DataOptions(augment=["eda", "swap_terms"]), rows(chat), [], 0.0, 3)
    eda_copy, swapped = prepared.train[1].data["messages"], prepared.train[2].data["messages"]
    assert eda_copy[1]["content"] == "he knows"  # the answer is never perturbed by EDA
    assert swapped == [
        {"role": "user", "content": "tell her the plan now"},
        {"role": "assistant", "content": "she knows"},
    ]


FOLDER = "Remember to bring the blue folder to the meeting tomorrow"  # ten words
FOLDER_VARIANTS = (
    "Remember to bring the blue folders to the meeting tomorrow",  # one word of ten differs: Jaccard 0.87
    "remember to bring the blue folder to the meeting",  # one word fewer: 0.84
    "Remember to bring the red folder to the meeting tomorrow",  # one word replaced: 0.73
    "Remember to bring the blue cake and wine for dinner",  # half the words shared: 0.3
)


def test_minhash_removes_rows_that_differ_by_a_word() -> None:
    data = [{"text": t, "label": "ham"} for t in (FOLDER, *FOLDER_VARIANTS)]
    train = rows(*data, {"text": FOLDER_VARIANTS[0], "label": "spam"})  # the same text with another label
    near = prepare_data(C, DataOptions(dedup="near"), train, [], 0.0, 0)
    assert len(near.train) == 6  # no two rows are equal without case, digits and punctuation

    prepared = prepare_data(C, DataOptions(dedup="minhash"), train, [], 0.0, 0)
    assert [s["step"] for s in prepared.report["steps"]] == ["dedup_exact", "dedup_near", "dedup_minhash"]
    minhash = step(prepared.report, "dedup_minhash")
    assert (minhash["rows_in"], minhash["rows_out"], minhash["threshold"]) == (6, 4, 0.8)
    assert minhash["examples"] == [[1, 2], [1, 3]]  # [kept line, dropped line]: the first occurrence stays
    assert [r.line for r in prepared.train] == [1, 4, 5, 6]  # the label spam keeps its row

    looser = prepare_data(C, DataOptions(dedup="minhash", dedup_threshold=0.7), train, [], 0.0, 0)
    assert [r.line for r in looser.train] == [1, 5, 6]  # the replaced word goes too, half the words still stays
    loosest = prepare_data(C, DataOptions(dedup="minhash", dedup_threshold=0.5), train, [], 0.0, 0)
    assert [r.line for r in loosest.train] == [1, 5, 6]

    # Without labels (causal_lm text rows) the spam row is a duplicate like any other.
    texts = rows(*({"text": r.data["text"]} for r in train))
    unlabelled = prepare_data(Task.causal_lm, DataOptions(dedup="minhash"), texts, [], 0.0, 0)
    assert [r.line for r in unlabelled.train] == [1, 4, 5]


def test_minhash_is_deterministic_and_handles_short_rows() -> None:
    train = rows(*({"text": t, "label": "ham"} for t in (FOLDER, *FOLDER_VARIANTS, "ok", "ok", "hi", "...", "ok?")))
    kept, pairs = dedup_minhash(train, 0.8, by_label=True)
    assert [r.line for r in kept] == [1, 4, 5, 6, 8, 9]  # "..." has no words: kept, never compared
    assert [(a.line, b.line) for a, b in pairs] == [(1, 2), (1, 3), (6, 7), (6, 10)]
    assert shingles("ok?") == {"ok"} and shingles("...") == set()
    assert shingles("Hi  there 42") == {"hi th", "i the", " ther", "there"}
    # The same rows whatever the job's seed (MinHash has its own fixed seed), and the same twice.
    reports = [prepare_data(C, DataOptions(dedup="minhash"), train, [], 0.0, seed).report for seed in (0, 0, 7)]
    assert reports[0] == reports[1] == reports[2]


def test_dedup_threshold_is_validated() -> None:
    assert DataOptions(dedup="minhash").dedup_threshold is None  # the report says 0.8
    assert DataOptions(dedup="minhash", dedup_threshold=0.95).active
    for bad in ({"dedup": "near", "dedup_threshold": 0.9}, {"dedup_threshold": 0.9}):
        with pytest.raises(ValidationError, match="dedup_threshold is for dedup minhash only") as e:
            DataOptions.model_validate(bad)
        assert e.value.errors()[0]["loc"] == ("dedup_threshold",)
    for value in (0.4, 1.01, float("nan")):
        with pytest.raises(ValidationError) as e:
            DataOptions(dedup="minhash", dedup_threshold=value)
        assert e.value.errors()[0]["loc"] == ("dedup_threshold",)
    with pytest.raises(ValidationError) as e:  # a bad dedup is reported as such, not as the threshold's fault
        DataOptions.model_validate({"dedup": "fuzzy", "dedup_threshold": 0.9})
    assert [err["loc"] for err in e.value.errors()] == [("dedup",)]


@pytest.mark.skipif(not SMS_SPAM.exists(), reason="../shared/data/sms_spam is not here")
def test_sms_spam_minhash_removes_more_than_near() -> None:
    data = [json.loads(line) for line in SMS_SPAM.read_text().splitlines() if line.strip()]
    train = [Row(i, d, "training_file") for i, d in enumerate(data, start=1)]
    near = prepare_data(C, DataOptions(dedup="near"), train, [], 0.0, 0)
    removed = {}
    for threshold in (0.8, 0.9):
        start = time.perf_counter()
        prepared = prepare_data(C, DataOptions(dedup="minhash", dedup_threshold=threshold), train, [], 0.0, 0)
        seconds = time.perf_counter() - start
        assert step(prepared.report, "dedup_near") == step(near.report, "dedup_near")  # minhash comes after near
        minhash = step(prepared.report, "dedup_minhash")
        assert minhash["rows_in"] == len(near.train) and len(prepared.train) == minhash["rows_out"]
        removed[threshold] = minhash["rows_in"] - minhash["rows_out"]
        assert len(minhash["examples"]) == 5
        for kept, dropped in minhash["examples"]:
            assert kept < dropped and data[kept - 1]["label"] == data[dropped - 1]["label"]
        print(f"sms_spam: near keeps {len(near.train)}, minhash {threshold} removes {removed[threshold]} more")
        print(f"sms_spam: minhash {threshold} took {seconds:.2f} s")
    assert removed[0.8] > removed[0.9] > 0  # at least as many as near, and more at the lower threshold


@pytest.mark.skipif(not SMS_SPAM.exists(), reason="../shared/data/sms_spam is not here")
def test_sms_spam_dedup_and_oversampling() -> None:
    data = [json.loads(line) for line in SMS_SPAM.read_text().splitlines() if line.strip()]
    duplicates = len(data) - len({(d["text"], d["label"]) for d in data})  # counted independently
    train = [Row(i, d, "training_file") for i, d in enumerate(data, start=1)]
    prepared = prepare_data(C, DataOptions(dedup="exact", balance="oversample"), train, None, 0.1, 42)
    dedup = step(prepared.report, "dedup_exact")
    assert dedup["rows_in"] - dedup["rows_out"] == duplicates == 403
    counts = Counter(r.data["label"] for r in prepared.train)
    assert counts["spam"] == counts["ham"]  # balanced training classes
    assert step(prepared.report, "balance_oversample")["before"]["spam"] < counts["spam"]
    val = Counter(r.data["label"] for r in prepared.validation or [])
    assert 0.10 < val["spam"] / sum(val.values()) < 0.16  # validation keeps the real class ratio


def test_weighted_loss(minilm: Path, tmp_path: Path) -> None:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, TrainingArguments

    from ftjobs.jobs.training.trainer import JobTrainer

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(minilm, num_labels=2)
    tokenizer = AutoTokenizer.from_pretrained(minilm)
    inputs = dict(tokenizer(["a b", "c d", "e f"], return_tensors="pt", padding=True))
    inputs["labels"] = torch.tensor([0, 1, 1])
    trainer = JobTrainer(model=model, args=TrainingArguments(output_dir=str(tmp_path), report_to="none"))
    model.train()
    torch.manual_seed(1)
    plain = trainer.compute_loss(model, inputs)
    trainer.class_weights = torch.tensor([1.0, 5.0])
    torch.manual_seed(1)  # the same dropout masks
    weighted, outputs = trainer.compute_loss(model, inputs, return_outputs=True)
    expected = torch.nn.functional.cross_entropy(outputs.logits, inputs["labels"], weight=torch.tensor([1.0, 5.0]))
    assert torch.allclose(weighted, expected) and not torch.allclose(weighted, plain)


def test_a_job_reports_its_data_steps_and_saves_the_split(redis, env, worker, minilm: Path) -> None:  # type: ignore[no-untyped-def]
    data = [{"text": f"win a {w} prize", "label": "spam"} for w in "car cup hat pen bag mug toy kit".split()]
    places = "park pub gym office station beach library market cinema church school bank museum garden zoo hotel"
    data += [{"text": f"see you at the {w} later", "label": "ham"} for w in (places + " cafe bakery").split()]
    data += [{"text": f"shall we meet at {n} then", "label": "ham"} for n in ("noon", "six", "eight", "ten")]
    dinner = "thanks for the lovely dinner last night, we should do it again soon with{} the kids"
    data += [{"text": dinner.format(""), "label": "ham"}, {"text": dinner.format(" all"), "label": "ham"}]
    data += data[:4]  # exact duplicates
    request = JobCreate(
        model=str(minilm),
        task=Task.classification,
        training_file=upload_rows(env, data),
        method=LoraMethod(r=4, alpha=8, dropout=0.0),
        hyperparameters=Hyperparameters(max_steps=2, batch_size=8, max_seq_length=16, validation_split=0.25),
        data=DataOptions(dedup="minhash", balance="oversample", augment=["eda"]),
    )
    job_id = submit(redis, env, request, validate=True)
    job = wait_for(redis, job_id, worker=worker, timeout=180)
    assert job["status"] == "succeeded", (job, worker.output()[-3000:])
    report = job["results"]["data"]
    assert [s["step"] for s in report["steps"]] == [
        "dedup_exact",
        "dedup_near",
        "dedup_minhash",
        "split",
        "augment",
        "balance_oversample",
    ]
    assert step(report, "dedup_exact")["rows_out"] == 32
    assert step(report, "dedup_minhash")["examples"] == [[31, 32]]  # the dinner with all the kids
    after = step(report, "balance_oversample")["after"]
    assert after["spam"] == after["ham"] == job["resolved"]["n_train"] // 2
    messages = [e["message"] for e in events(redis, job_id)]
    assert messages.count("data: dedup_exact: 36 -> 32 rows") == 1  # by the validation, not again in training
    assert messages.index("data: dedup_exact: 36 -> 32 rows") < messages.index("files validated; queued")
    assert messages.count("data: dedup_minhash: 32 -> 31 rows") == 1
    root = store_root(env)
    saved = json.loads((root / artifact_path("default", job_id, "data_report.json")).read_text())
    assert saved == report
    split_val = (root / artifact_path("default", job_id, "split/validation.jsonl")).read_text().splitlines()
    split_train = (root / artifact_path("default", job_id, "split/train.jsonl")).read_text().splitlines()
    assert len(split_val) == 8 == job["resolved"]["n_validation"]  # round(31 * 0.25)
    assert {json.loads(x)["line"] for x in split_val}.isdisjoint(json.loads(x)["line"] for x in split_train)
    assert report["tokens"]["examples"] == job["resolved"]["n_train"] and report["tokens"]["truncated"] == 0
    assert not (root / prepared_dir("default", job_id)).exists()  # the training run read what validation saved

    # Cleaning that leaves too little to train on fails the job before the model is loaded.
    request = request.model_copy(update={"data": DataOptions(min_chars=1000)})
    job_id = submit(redis, env, request, validate=True)
    job = wait_for(redis, job_id, worker=worker, timeout=60)
    assert job["status"] == "failed" and job["error"]["code"] == "invalid_data", job["error"]
    statuses = [e["data"]["status"] for e in events(redis, job_id) if e["type"] == "status"]
    assert statuses == ["failed"] and job["attempt"] == 0 and job["started_at"] is None  # failed validating
    assert "0 row(s)" in job["error"]["message"]


def test_token_report() -> None:
    examples = [{"input_ids": [0] * n} for n in (3, 9, 16, 16, 12)]
    report = token_report(examples, 16)
    assert report["truncated"] == 2 and (report["min"], report["median"], report["max"]) == (3, 12, 16)
    assert report["histogram"] == {"<=8": 1, "<=16": 4}


def test_training_reuses_the_first_half_its_validation_saved(tmp_path: Path) -> None:
    store = Storage(f"file://{tmp_path / 'store'}")
    file_id, job_id = "file-" + "0" * 20, "ftjob-" + "0" * 20
    data = [{"text": f"row {i % 9}", "label": "ab"[i % 2]} for i in range(30)]  # duplicates: dedup has work
    store.write_bytes(file_path("t", file_id), "".join(json.dumps(r) + "\n" for r in data).encode())
    request = JobCreate(
        model="m",
        task=Task.classification,
        training_file=file_id,
        method=LoraMethod(),
        hyperparameters=Hyperparameters(validation_split=0.25, seed=3),
        data=DataOptions(dedup="exact", balance="oversample", augment=["eda"]),
    )
    hp = request.hyperparameters
    validated = prepare_job_data(store, "t", job_id, request, hp, tmp_path / "v", save=True)
    saved = f"{prepared_dir('t', job_id)}/{first_half_key(request, hp)}.json"
    assert store.exists(saved)

    store.delete(file_path("t", file_id))  # the training run must not need the file again
    trained = prepare_job_data(store, "t", job_id, request, hp, tmp_path / "t")
    for mine, theirs in ((trained.train, validated.train), (trained.validation, validated.validation)):
        assert [(r.line, r.file, r.data) for r in mine or []] == [(r.line, r.file, r.data) for r in theirs or []]
    assert trained.report == validated.report and trained.notes == validated.notes
    assert not store.exists(prepared_dir("t", job_id))  # read once

    # A saved first half of another request (another seed) is never reused: the run goes back to the file.
    store.write_bytes(file_path("t", file_id), "".join(json.dumps(r) + "\n" for r in data).encode())
    prepare_job_data(store, "t", job_id, request, hp, tmp_path / "v2", save=True)
    store.delete(file_path("t", file_id))
    reseeded = hp.model_copy(update={"seed": 4})
    with pytest.raises(DataError, match="not in the store"):
        prepare_job_data(store, "t", job_id, request, reseeded, tmp_path / "t2")
    assert not store.exists(prepared_dir("t", job_id))  # the stale one is gone too
