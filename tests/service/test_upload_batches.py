"""Uploads checked by column (`RowValidator.check_rows`, `ProfileBuilder.add_columns`, the JSONL reader's batches)
say exactly what the row-by-row checks say: the same problems with their lines, warnings with their first lines and
in the same order, the same profile; whatever the chunking of the bytes."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from ftjobs.service.errors import ServiceError
from ftjobs.service.readers import JsonlReader
from ftjobs.service.validation import RowValidator

WORDS = ["a", "b", "cat", "dog", " ", "", "x y z", "héllo", "\u2028", "tab\t", "  pad  "]


def text(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(0, 4)))


def files(rng: random.Random) -> dict[str, list[Any]]:
    """Rows (parsed) of files valid and not: duplicates, blanks, labels of both types, extra keys, mixed shapes."""
    return {
        "prompt_completion": [{"prompt": text(rng), "completion": text(rng) or "c"} for _ in range(3000)],
        "duplicates": [
            {"prompt": rng.choice(["p1", "p2", ""]), "completion": rng.choice(["c1", "c2"])} for _ in range(3000)
        ],
        "empty_completion": [{"prompt": "p", "completion": rng.choice(["c", "", " "])} for _ in range(2500)],
        "source_target": [{"source": text(rng), "target": text(rng) or "t"} for _ in range(2500)],
        "text": [{"text": text(rng) or "t"} for _ in range(2500)],
        "text_label": [
            {"text": rng.choice(["t1", "t2", text(rng) or "q"]), "label": rng.choice(["a", " a", "b ", 1, 2])}
            for _ in range(3000)
        ],
        "bad_labels": [{"text": "t", "label": rng.choice(["a", None, "", True, 1.5, "b"])} for _ in range(2500)],
        "label_missing": [{"text": "t", "label": "a"}] * 1500 + [{"text": "t"}] + [{"text": "u", "label": 1}] * 1500,
        "extra_keys": [{"prompt": "p", "completion": "c", "id": i} for i in range(2000)] + [{"prompt": "p"}] * 3,
        "mixed": [{"prompt": "p", "completion": "c"}] * 1500 + [{"source": "s", "target": "t"}] * 3,
        "types": [{"prompt": "p", "completion": rng.choice(["c", 3, None, ["x"]])} for _ in range(2500)],
        "not_objects": [rng.choice([{"text": "a"}, [1, 2], 3, "s", None]) for _ in range(2500)],
        "messages": [
            {"messages": [{"role": "user", "content": text(rng)}, {"role": "assistant", "content": "ok"}]}
            for _ in range(2000)
        ],
    }


def outcome(validator: RowValidator) -> dict[str, Any]:
    out: dict[str, Any] = {"rows": validator.rows, "warnings": [w.model_dump() for w in validator.warnings()]}
    try:
        out["format"] = validator.finish("f.jsonl")
        out["profile"] = validator.profile.build("file-x").model_dump()
    except ServiceError as error:
        out["error"] = (str(error), error.param)
    return out


@pytest.mark.parametrize("batch", [1, 7, 1024])
def test_by_column_is_row_by_row(batch: int) -> None:
    for name, rows in files(random.Random(batch)).items():
        one, many = RowValidator(), RowValidator()
        for line, row in enumerate(rows, 1):
            one.rows += 1
            one.check(line, row)
        for start in range(0, len(rows), batch):
            many.rows += len(rows[start : start + batch])
            many.check_rows(start + 1, rows[start : start + batch])
        assert outcome(many) == outcome(one), name


def test_jsonl_batches_whatever_the_chunks() -> None:
    rng = random.Random(3)
    lines = [json.dumps({"prompt": text(rng), "completion": "c"}) for _ in range(5000)]
    for i in rng.sample(range(5000), 30):  # blank, malformed, two documents on one line, NaN, a lone surrogate
        lines[i] = rng.choice(["", "   ", "\r", "{bad", '{"prompt": "p", "completion": NaN}', '{"a":1},{"b":2}', "[1"])
    data = ("\ufeff" + "\r\n".join(lines) + "\n").encode()
    results = []
    for chunk in (97, 4096, len(data)):
        reader = JsonlReader(10**9)
        for i in range(0, len(data), chunk):
            reader.feed(data[i : i + chunk])
        with pytest.raises(ServiceError) as error:
            reader.finish("f.jsonl")
        results.append((str(error.value), reader.rows.rows, reader.line_no, reader.stored_bytes))
    assert results[0] == results[1] == results[2]
    assert "line " in results[0][0] and results[0][2] == 5000
