"""GET /v1/files/{id}/profile: label distribution, lengths, duplicates; computed in the upload's pass."""

from __future__ import annotations

import json
import statistics
from collections import Counter
from pathlib import Path

import pytest

from ftjobs.core.keys import file_profile_path
from ftjobs.core.storage import Storage
from tests.service.conftest import assert_error, jsonl, upload

SMS_SPAM = Path(__file__).resolve().parents[3] / "shared" / "data" / "sms_spam" / "sms_spam.jsonl"


def test_profile_of_a_small_classification_file(http):  # type: ignore[no-untyped-def]
    rows = [
        {"text": "win a prize now", "label": "spam"},
        {"text": "see you at 5", "label": "ham"},
        {"text": "see you at 5", "label": "ham"},  # exact duplicate
        {"text": "see you at 5", "label": "spam"},  # same text, other label
        {"text": "ok", "label": "ham", "id": 7},
    ]
    file = upload(http, jsonl(rows)).json()
    profile = http.get(f"/v1/files/{file['id']}/profile").json()
    assert profile["rows"] == 5 and profile["format"] == "text_label"
    assert profile["columns"] == ["id", "label", "text"]
    assert profile["labels"] == [
        {"label": "ham", "count": 3, "fraction": 0.6},
        {"label": "spam", "count": 2, "fraction": 0.4},
    ]
    assert (profile["exact_duplicates"], profile["duplicate_texts"], profile["conflicting_labels"]) == (1, 2, 1)
    (text,) = profile["fields"]
    lengths = [len(r["text"]) for r in rows]
    assert text["chars"] == {
        "min": 2,
        "mean": statistics.mean(lengths),
        "median": statistics.median(lengths),
        "p95": 15,
        "max": 15,
    }
    assert text["words"]["max"] == 4 and text["empty"] == 0


def test_profile_of_a_chat_file_and_an_old_file_without_one(http, settings):  # type: ignore[no-untyped-def]
    chat = {"messages": [{"role": "user", "content": "hi there"}, {"role": "assistant", "content": "hello"}]}
    file = upload(http, jsonl([chat, chat])).json()
    storage = Storage(settings.storage_url)
    storage.delete(file_profile_path("default", file["id"]))  # as if uploaded before profiles existed
    profile = http.get(f"/v1/files/{file['id']}/profile").json()  # computed from storage, then stored
    assert profile["exact_duplicates"] == 1 and profile["labels"] is None
    assert profile["fields"][0]["name"] == "messages" and profile["fields"][0]["words"]["max"] == 3
    assert storage.exists(file_profile_path("default", file["id"]))


def test_profile_of_an_unknown_file_is_404(http):  # type: ignore[no-untyped-def]
    assert_error(http.get("/v1/files/file-00000000000000000000/profile"), 404, "file_not_found")


@pytest.mark.skipif(not SMS_SPAM.exists(), reason="../shared/data/sms_spam is not here")
def test_sms_spam_profile(client):  # type: ignore[no-untyped-def]
    rows = [json.loads(line) for line in SMS_SPAM.read_text().splitlines() if line.strip()]
    pairs = [(r["text"], r["label"]) for r in rows]
    duplicates = len(pairs) - len(set(pairs))  # counted independently of the service
    file = client.files.upload(SMS_SPAM)
    profile = client.files.profile(file.id)
    assert profile.rows == len(rows) == 5574
    spam = next(c for c in profile.labels if c.label == "spam")
    assert spam.count == Counter(r["label"] for r in rows)["spam"]
    assert round(spam.fraction * 100, 1) == 13.4
    assert profile.exact_duplicates == duplicates == 403
    assert file.warning_details[0].code == "duplicate_row" and file.warning_details[0].count == duplicates
