"""`ftjobs submit`'s training flags: the hyperparameters it sets, and the resources a job trains on
(docs/scaling.md). Registered here so the CLI module stays small; the API validates every value."""

from __future__ import annotations

import argparse
from typing import Any

from ftjobs.client.cli_base import learning_rate

SHARDING = ("ddp", "fsdp")


def add_training_flags(p: argparse.ArgumentParser) -> None:
    """The hyperparameter and resources flags of `ftjobs submit`."""
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int, help="examples per process and step")
    p.add_argument("--learning-rate", type=learning_rate, help="a float or 'auto'")
    p.add_argument("--max-seq-length", type=int)
    p.add_argument("--max-steps", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--processes", type=int, help="training processes for the job (data-parallel; default 1)")
    p.add_argument("--nodes", type=int, help="machines (workers) the job trains on at once, --processes on each")
    p.add_argument("--gpus-per-process", type=int, choices=[0, 1], help="0: CPU only; default 1 on GPU workers")
    p.add_argument("--hardware", help="hardware class to train on (its queue), e.g. cpu or gpu")
    p.add_argument("--sharding", choices=SHARDING, help="ddp (default) or fsdp (method full, GPU workers)")


def hyperparameter_fields(args: argparse.Namespace) -> dict[str, Any]:
    """The hyperparameters given on the command line (the others: the server's defaults)."""
    hp = {
        "n_epochs": args.epochs,
        "batch_size": args.batch_size,
        "learning_rate": args.learning_rate,
        "max_seq_length": args.max_seq_length,
        "max_steps": args.max_steps,
        "seed": args.seed,
    }
    return {k: v for k, v in hp.items() if v is not None}


def resource_fields(args: argparse.Namespace) -> dict[str, Any] | None:
    """`resources` as given on the command line; None when no flag set one."""
    given = {
        "processes": args.processes,
        "nodes": args.nodes,
        "gpus_per_process": args.gpus_per_process,
        "hardware": args.hardware,
        "sharding": args.sharding,
    }
    return {k: v for k, v in given.items() if v is not None} or None
