"""eval_samples.jsonl: the qualitative review of a job, validation inputs beside what the model said."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

EVAL_SAMPLES = "eval_samples.jsonl"


def write_eval_samples(out: Path, rows: Sequence[dict[str, Any]]) -> Path | None:
    """Validation examples with their predictions before and after training, one JSON object a line."""
    if not rows:
        return None
    out.mkdir(parents=True, exist_ok=True)
    path = out / EVAL_SAMPLES
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path
