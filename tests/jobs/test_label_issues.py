"""Likely label errors (jobs/data/label_issues.py): the finder on seeded flips, a file's profile, drop_label_issues."""

from __future__ import annotations

import json
import random
from pathlib import Path

from ftjobs.client.display import describe_profile
from ftjobs.client.models import JobStatus
from ftjobs.jobs.data.label_issues import drop_issues, find_in_rows
from ftjobs.jobs.data.read import Row
from tests.tiny_models import build_tiny_bert

WORDS = {
    "cooking": "bake stir chop simmer roast knead whisk fry season grill".split(),
    "sports": "kick run score dribble sprint tackle pass shoot serve jump".split(),
}
SHARED = "the a today we they now again quickly".split()
FLOOR = 0.6  # precision and recall the finder must reach on clearly separable topics


def noisy_rows(n: int, flips: int, seed: int) -> tuple[list[dict[str, str]], set[int]]:
    """Two topics with their own words; a seeded `flips` of the rows get the other topic's label."""
    rng = random.Random(seed)
    labels = sorted(WORDS)
    rows = []
    for i in range(n):
        label = labels[i % 2]
        words = rng.sample(WORDS[label], 4) + rng.sample(SHARED, 2)
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "label": label})
    flipped = set(rng.sample(range(n), flips))
    for i in flipped:
        rows[i]["label"] = labels[1 - labels.index(rows[i]["label"])]
    return rows, flipped


def test_the_finder_finds_seeded_label_flips() -> None:
    data, flipped = noisy_rows(160, 8, seed=3)
    rows = [Row(i + 1, d, "training_file") for i, d in enumerate(data)]
    found = find_in_rows(rows, seed=0)
    hits = set(found.indices) & flipped
    assert found.rows == len(rows) and found.indices
    assert len(hits) / len(found.indices) >= FLOOR and len(hits) / len(flipped) >= FLOOR, (found.indices, flipped)
    for i, suggested, score in zip(found.indices, found.suggested, found.scores, strict=True):
        assert suggested != data[i]["label"] and 0.0 <= score <= 0.5  # flagged: the model prefers the other label
    assert found.scores == sorted(found.scores)  # most suspect first

    kept, details = drop_issues(rows, seed=0)
    assert len(kept) == len(rows) - details["found"] and details["found"] == len(found.indices)
    assert {e["line"] for e in details["examples"]} <= {r.line for r in rows} - {r.line for r in kept}


def test_a_label_that_occurs_once_is_not_checked() -> None:
    data, _ = noisy_rows(40, 0, seed=1)
    data.append({"text": "bake stir", "label": "rare"})
    found = find_in_rows([Row(i + 1, d, "training_file") for i, d in enumerate(data)], seed=0)
    assert len(data) - 1 not in found.indices and found.note and "once" in found.note


def test_a_job_drops_label_issues_and_the_profile_lists_them(  # type: ignore[no-untyped-def]
    client, worker, model_root: Path, tmp_path: Path
) -> None:
    bert = build_tiny_bert(model_root / "tiny-bert")
    data, flipped = noisy_rows(120, 6, seed=5)
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in data))
    train = client.files.upload(path)
    job = client.jobs.create(
        model=str(bert),
        task="classification",
        training_file=train.id,
        method={"type": "lora", "r": 4, "alpha": 8, "target_modules": ["query", "value"]},
        hyperparameters={"max_steps": 2, "batch_size": 8, "validation_split": 0.2},
        data={"drop_label_issues": True},
        eval_generation_limit=0,
    )
    job = client.jobs.wait(job.id, timeout=300)
    assert job.status == JobStatus.succeeded, (job.error, worker.output()[-3000:])

    steps = {s["step"]: s for s in job.results["data"]["steps"]}
    step, split = steps["drop_label_issues"], steps["split"]
    assert step["rows_in"] == split["rows_out"] and step["rows_out"] == step["rows_in"] - step["found"] > 0
    assert step["found"] >= 1 and job.resolved_hyperparameters["n_train"] == step["rows_out"]
    messages = [e.message for e in client.jobs.events(job.id, limit=1000).data]
    assert any(m.startswith("data: drop_label_issues:") for m in messages), messages

    # The training file's profile lists the whole file's likely errors, with the lines of the upload.
    issues = client.files.profile(train.id).label_issues
    assert issues is not None and issues.job_id == job.id and issues.rows == len(data)
    lines = {i.line for i in issues.issues}
    assert issues.found == len(issues.issues) and len({i - 1 for i in lines} & flipped) / len(flipped) >= FLOOR
    assert all(i.suggested != data[i.line - 1]["label"] for i in issues.issues)
    assert "label issues" in describe_profile(client.files.profile(train.id))
