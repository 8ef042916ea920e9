"""`ftjobs annotate create|list|get` against the real app and a real worker (rules only: no model to load), and the
client's `Annotations` resource behind it."""

from __future__ import annotations

import json
from pathlib import Path

from ftjobs.client.annotations import Annotations
from ftjobs.client.cli import main


def test_annotate_commands_end_to_end(client, worker, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    rows = [{"text": t} for t in ("WIN a free prize now 80086", "are you home later", "claim your cash prize",
                                  "sorry running late lol", "free entry 2 win 12345", "the weather")] * 5  # fmt: skip
    data = tmp_path / "sms.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    argv = ["annotate", "create", str(data), "--labels", "ham,spam", "--keywords", "spam=free,prize,win",
            "--regex", r"spam=\b\d{5}\b", "--keywords", "ham=home,sorry,lol", "--wait", "--timeout", "240"]  # fmt: skip
    assert main(argv, client=client) == 0, capsys.readouterr().err
    shown = capsys.readouterr().out
    assert "label_model: 25 rows labeled, 0 given, 5 left out" in shown and "keywords_spam_0" in shown, shown
    annotation_id = shown.split()[0]
    annotation = Annotations(client).get(annotation_id)
    assert annotation.output_file_id is not None and annotation.label_model is not None
    assert annotation.label_model.class_balance == {"ham": 10, "spam": 15}
    out = [
        json.loads(line)
        for line in client._http.get(f"/v1/files/{annotation.output_file_id}/content").text.splitlines()
    ]
    spam = next(r for r in out if r["text"].startswith("free entry"))
    assert spam["label"] == "spam" and set(spam["annotation"]["votes"]) == {
        "keywords_spam_0",
        "regex_spam_2",
    }  # keywords, then regex
    assert main(["annotate", "list"], client=client) == 0
    assert annotation_id in capsys.readouterr().out
    assert main(["--json", "annotate", "get", annotation_id], client=client) == 0
    assert json.loads(capsys.readouterr().out)["function_stats"][0]["coverage"] == 0.5

    # A bad regular expression comes back as the API's 422 naming the field.
    assert main([*argv[:5], "--regex", "spam=(unclosed"], client=client) == 1
    assert "functions" in capsys.readouterr().err
