"""Annotation: labeling functions (keywords, regular expressions, MiniLM's zero-shot guess) over the demo's SMS spam
held-out rows, combined by Snorkel's LabelModel on a real worker; the labeled file is an ordinary file with each
row's provenance; the label model beats chance and majority vote against the true labels. And the API's 4xx."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from tests.service.conftest import assert_error, jsonl, upload

REPO = Path(__file__).resolve().parents[2]
HELDOUT = REPO / "launch" / "demo_data" / "sms_spam_heldout.jsonl"
LABELS = ["ham", "spam"]


def sms_functions(model: str) -> list[dict[str, Any]]:
    """Five labeling functions for SMS spam: four cheap rules and MiniLM's zero-shot guess."""
    spam_words = ["free", "win", "winner", "won", "prize", "claim", "urgent", "cash", "award", "txt", "guaranteed",
                  "offer", "ringtone", "voucher", "subscription", "tone", "entry"]  # fmt: skip
    chat_words = ["i'll", "i'm", "lol", "lor", "haha", "sorry", "love", "home", "later", "tonight", "ok", "dinner",
                  "gonna", "my", "u", "you"]  # fmt: skip
    return [
        {"type": "keywords", "label": "spam", "keywords": spam_words, "name": "spam_words"},
        {"type": "regex", "label": "spam", "pattern": r"\b\d{5,}\b", "name": "long_number"},
        {"type": "regex", "label": "spam", "pattern": r"[£$€]\s?\d|\d+p\b|https?://|www\.", "name": "money_or_url"},
        {"type": "keywords", "label": "ham", "keywords": chat_words, "name": "chat_words"},
        {"type": "zero_shot", "model": model, "name": "minilm", "descriptions": {
            "ham": "a personal message between friends or family",
            "spam": "an advertisement, prize or promotional offer text message",
        }},
    ]  # fmt: skip


def partly_labeled(n_given: int, seed: int = 0, limit: int | None = None) -> tuple[list[dict[str, Any]], np.ndarray]:
    """The held-out rows with their labels moved to `truth`; `n_given` of them (stratified, seeded) in `known`."""
    rows = [json.loads(line) for line in HELDOUT.read_text(encoding="utf-8").splitlines() if line.strip()][:limit]
    truth = np.array([LABELS.index(r["label"]) for r in rows])
    rng = np.random.default_rng(seed)
    keep: set[int] = set()
    for label in (0, 1):
        members = np.flatnonzero(truth == label)
        share = max(1, round(n_given * len(members) / len(rows)))
        keep.update(int(i) for i in rng.choice(members, share, replace=False))
    out = [{"text": r["text"], "truth": r["label"], **({"known": r["label"]} if i in keep else {})}
           for i, r in enumerate(rows)]  # fmt: skip
    return out, truth


def finished(http: httpx.Client, annotation_id: str, timeout: float = 300) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        body = http.get(f"/v1/annotations/{annotation_id}").json()
        if body["status"] in ("succeeded", "failed") and (body["status"] == "failed" or body["output_file_id"]):
            return body
        assert time.monotonic() < deadline, body
        time.sleep(0.5)


def scores(predicted: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import f1_score

    return {
        "accuracy": float((predicted == truth).mean()),
        "macro_f1": float(f1_score(truth, predicted, average="macro")),
        "spam_f1": float(f1_score(truth, predicted)),
    }


def majority_vote(votes: dict[str, str]) -> float:
    """P(spam) under majority vote with ties broken at random (0.5)."""
    spam = sum(v == "spam" for v in votes.values())
    ham = len(votes) - spam
    return 1.0 if spam > ham else 0.0 if ham > spam else 0.5


def test_labeling_functions_on_sms_spam_beat_chance_and_majority_vote(http, worker, minilm: Path) -> None:  # type: ignore[no-untyped-def]
    rows, truth = partly_labeled(20, limit=200)
    file_id = upload(http, jsonl(rows), filename="sms.jsonl").json()["id"]
    started = time.monotonic()
    created = http.post("/v1/annotations", json={"file_id": file_id, "labels": LABELS, "given_field": "known",
                                                 "functions": sms_functions("all-MiniLM-L6-v2")})  # fmt: skip
    assert created.status_code == 202, created.text
    assert created.json()["functions"][4]["model"] == "all-MiniLM-L6-v2"  # no server path in the record
    done = finished(http, created.json()["id"])
    assert done["status"] == "succeeded", done.get("error") or worker.output()[-3000:]
    elapsed = time.monotonic() - started
    stats = {s["name"]: s for s in done["function_stats"]}
    assert set(stats) == {"spam_words", "long_number", "money_or_url", "chat_words", "minilm"}
    for s in stats.values():
        assert 0 < s["coverage"] <= 1 and 0 <= s["conflicts"] <= s["overlaps"] <= s["coverage"]
    assert stats["long_number"]["polarity"] == ["spam"] and stats["minilm"]["polarity"] == ["ham", "spam"]
    summary = done["label_model"]
    assert summary["method"] == "label_model" and summary["rows"] == len(rows) and summary["given"] >= 20
    assert summary["given"] + summary["labeled"] + summary["abstained"] == len(rows)

    file = http.get(f"/v1/files/{done['output_file_id']}").json()
    assert file["format"] == "text_label" and file["rows"] == len(rows) - summary["abstained"]
    out = [json.loads(line) for line in http.get(f"/v1/files/{file['id']}/content").text.splitlines()]
    by_text = {(r["text"], r["truth"]): r for r in out}
    assert len(out) == file["rows"]
    labeled = [r for r in out if r["annotation"]["source"] == "label_model"]
    assert all(0.5 <= r["annotation"]["probability"] <= 1 and r["annotation"]["votes"] for r in labeled)
    assert all(r["annotation"]["source"] == "given" for r in out if "truth" in r and r not in labeled)
    gold = np.array([LABELS.index(r["truth"]) for r in labeled])
    model = scores(np.array([LABELS.index(r["label"]) for r in labeled]), gold)
    mv = np.array([majority_vote(r["annotation"]["votes"]) for r in labeled])
    mv_accuracy = float(np.mean(np.where(gold == 1, mv, 1 - mv)))  # expected accuracy, ties at random
    majority_class = float(max(np.mean(gold), 1 - np.mean(gold)))
    coverage = summary["coverage"]
    print(
        f"\nannotation of {len(rows)} SMS rows ({summary['given']} given) in {elapsed:.0f} s: coverage {coverage:.3f}, "
        f"label model accuracy {model['accuracy']:.3f} (macro-F1 {model['macro_f1']:.3f}, spam F1 "
        f"{model['spam_f1']:.3f}), majority vote {mv_accuracy:.3f}, majority class {majority_class:.3f}; functions: "
        + ", ".join(f"{n} cov {s['coverage']:.2f} acc {s['accuracy']}" for n, s in stats.items())
    )
    assert coverage > 0.9 and len(labeled) > 150 and len(by_text) > 0
    assert model["macro_f1"] > 0.75  # chance: 0.5
    assert model["accuracy"] > majority_class  # beats always answering ham
    assert model["accuracy"] >= mv_accuracy


def test_bad_requests_are_4xx_naming_the_field(http, model_root: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    file_id = upload(http, jsonl([{"text": "hi", "label": "ham"}, {"text": "win cash", "label": "spam"}])).json()["id"]
    kw = {"type": "keywords", "label": "spam", "keywords": ["win"]}
    base = {"file_id": file_id, "labels": LABELS, "functions": [kw]}

    def post(**changes: Any) -> httpx.Response:
        return http.post("/v1/annotations", json={**base, **changes})

    bad_regex = post(functions=[{"type": "regex", "label": "spam", "pattern": "(unclosed"}])
    assert "functions" in str(assert_error(bad_regex, 422, "validation_error")["param"])
    assert "regular expression" in bad_regex.json()["error"]["message"]
    assert_error(post(functions=[{**kw, "label": "eggs"}]), 422, "validation_error", "functions[0].label")
    assert "functions" in str(assert_error(post(functions=[{**kw, "keywords": []}]), 422, "validation_error")["param"])
    assert "functions" in str(
        assert_error(post(functions=[{**kw, "keywords": [" "]}]), 422, "validation_error")["param"]
    )
    everything = {"type": "regex", "label": "spam", "pattern": ".*"}
    assert "functions" in str(assert_error(post(functions=[everything]), 422, "validation_error")["param"])
    zs = {"type": "zero_shot", "descriptions": {"ham": "a chat", "spam": "an advert"}}
    outside = tmp_path / "elsewhere-model"
    outside.mkdir()
    (outside / "config.json").write_text("{}")
    assert_error(post(functions=[{**zs, "model": str(outside)}]), 422, "model_not_allowed", "functions[0].model")
    for shape in ("../../etc", "a\x00b"):
        error = assert_error(post(functions=[{**zs, "model": shape}]), 422, "validation_error")
        assert "model" in str(error["param"]), error
    deep = {"type": "regex", "label": "spam", "pattern": "(" * 500 + ")" * 500}
    assert "regular expression" in assert_error(post(functions=[deep]), 422, "validation_error")["message"]
    assert_error(post(functions=[{**zs, "model": "no-such-model"}]), 422, "model_not_allowed", "functions[0].model")
    unknown = {**zs, "descriptions": {"ham": "a chat", "eggs": "food"}}
    assert_error(post(functions=[unknown]), 422, "validation_error", "functions[0].descriptions")
    twice = {**kw, "name": "same"}
    assert_error(post(functions=[twice, twice]), 422, "validation_error", "functions[1].name")
    assert_error(post(labels=["ham", "ham"]), 422, "validation_error", "labels")
    assert "labels" in str(assert_error(post(labels=["ham"]), 422, "validation_error")["param"])
    assert_error(post(text_field="body"), 422, "validation_error", "text_field")
    assert_error(post(file_id="file-" + "0" * 20), 404, "file_not_found", "file_id")
    assert_error(post(class_balance={"ham": 0.9}), 422, "validation_error", "class_balance")
    assert "functions" in str(assert_error(post(functions=[]), 422, "validation_error")["param"])
    assert "functions" in str(
        assert_error(post(functions=[{"type": "llm", "label": "spam"}]), 422, "validation_error")["param"]
    )
    assert_error(http.get("/v1/annotations/annot-" + "0" * 20), 404, "annotation_not_found", "annotation_id")
    assert http.get("/v1/annotations").json()["data"] == []


def test_a_row_without_the_text_field_fails_the_annotation_naming_its_line(http, worker) -> None:  # type: ignore[no-untyped-def]
    rows = [{"text": "a", "body": "win cash now"}, {"text": "b", "body": "ok see you"}, {"text": "c"}]
    file_id = upload(http, jsonl(rows)).json()["id"]
    kw = {"type": "keywords", "label": "spam", "keywords": ["win"]}
    body = {"file_id": file_id, "labels": LABELS, "text_field": "body", "functions": [kw]}
    created = http.post("/v1/annotations", json=body)
    assert created.status_code == 202, created.text
    done = finished(http, created.json()["id"], timeout=120)
    assert done["status"] == "failed" and done["error"]["code"] == "invalid_rows", done
    assert "line 3" in done["error"]["message"] and done["output_file_id"] is None


def test_another_tenant_neither_sees_nor_uses_an_annotation(make_client) -> None:  # type: ignore[no-untyped-def]
    keys = {"sk-alpha-0123456789abcdef": "alpha", "sk-beta-fedcba9876543210": "beta"}
    http = make_client(api_keys=keys)
    a, b = ({"Authorization": f"Bearer {key}"} for key in keys)
    file_id = upload(http, jsonl([{"text": "win cash", "label": "spam"}]), headers=a).json()["id"]
    body = {
        "file_id": file_id,
        "labels": LABELS,
        "functions": [{"type": "keywords", "label": "spam", "keywords": ["x"]}],
    }
    created = http.post("/v1/annotations", json=body, headers=a)
    assert created.status_code == 202, created.text
    annotation_id = created.json()["id"]
    assert_error(http.get(f"/v1/annotations/{annotation_id}", headers=b), 404, "annotation_not_found", "annotation_id")
    assert http.get("/v1/annotations", headers=b).json()["data"] == []
    assert_error(http.post("/v1/annotations", json=body, headers=b), 404, "file_not_found", "file_id")
    assert http.get(f"/v1/annotations/{annotation_id}", headers=a).json()["status"] == "queued"
    assert [x["id"] for x in http.get("/v1/annotations", headers=a).json()["data"]] == [annotation_id]
