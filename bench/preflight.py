"""How close is the memory preflight (jobs/training/preflight.py) to what training really takes, on the CPU?

One llama-shaped model built in code (random weights, saved once); each configuration trains a few steps in a
fresh interpreter, the way a job does (ftjobs' load_model and apply_method, the Trainer's fused AdamW, fp32,
padded batches of random tokens), and reports its peak RSS (getrusage) and its RSS before the weights loaded.
The estimate is for what training adds, so the ratio compared is estimate / (peak RSS - RSS before loading);
the whole-process ratio is printed beside it. The FSDP configuration runs its ranks under torchrun (gloo, each
rank's Trainer as a job's rank builds it: jobs/training/sharding.py) and compares the per-rank estimate with the
rank whose peak grew most.

    .venv/bin/python bench/preflight.py [--hidden 512] [--layers 8] [--batch 4] [--seq 256]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

CHILD = textwrap.dedent(
    """
    import json, os, resource, sys
    from pathlib import Path
    import torch
    from transformers import Trainer, TrainingArguments
    from ftjobs.client.models import FullMethod, LoraMethod, PromptTuningMethod, Task
    from ftjobs.jobs.data.inputs import load_model
    from ftjobs.jobs.training.methods import apply_method
    from ftjobs.jobs.training import sharding
    from ftjobs.jobs.training.trainer import JobTrainer, PadCollator

    def rss() -> int:
        for line in open("/proc/self/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    folder, out, cfg = Path(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3])
    torch.manual_seed(0)
    vocab = cfg["vocab"]
    rows = [{"input_ids": ids, "attention_mask": [1] * len(ids), "labels": ids}
            for ids in (torch.randint(5, vocab, (cfg["seq"],)).tolist() for _ in range(cfg["batch"] * cfg["steps"]))]
    fsdp = cfg.get("processes", 1) > 1
    if fsdp:  # a rank under torchrun, as a job's rank trains (FTJOBS_SHARDING=fsdp: jobs/training/sharding.py)
        torch.distributed.init_process_group("gloo")
        torch.set_num_threads(1)
    before = rss()
    model = load_model(folder, Task.causal_lm, None)
    method = {"full": FullMethod(), "lora": LoraMethod(r=16, alpha=32),
              "prompt_tuning": PromptTuningMethod(num_virtual_tokens=16)}[cfg["method"]]
    model = apply_method(model, method, Task.causal_lm)
    args = TrainingArguments(output_dir=out, report_to="none", per_device_train_batch_size=cfg["batch"],
                             max_steps=cfg["steps"], save_strategy="no", logging_steps=1, disable_tqdm=True,
                             gradient_checkpointing=cfg["checkpointing"], remove_unused_columns=False,
                             label_names=["labels"], dataloader_num_workers=0, learning_rate=1e-4,
                             **sharding.sharding_arguments())
    trainer = (JobTrainer if fsdp else Trainer)(model=model, args=args, train_dataset=rows,
                                                data_collator=PadCollator(0))
    trainer.train()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    print("RSS " + json.dumps({"before": before, "peak": peak, "rank": int(os.environ.get("RANK", "0"))}))
    if fsdp:
        torch.distributed.destroy_process_group()
    """
)

CONFIGS = [  # (name, method, gradient checkpointing, processes: > 1 is FSDP on that many ranks, per rank)
    ("full", "full", False, 1),
    ("lora", "lora", False, 1),
    ("full + checkpointing", "full", True, 1),
    ("prompt tuning", "prompt_tuning", False, 1),
    ("full, FSDP 2 ranks", "full", False, 2),
]


def build(folder: Path, hidden: int, layers: int, vocab: int) -> None:
    """A llama-shaped causal LM, random weights, saved as a model folder."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=hidden * 8 // 3 // 64 * 64 + 64,
        num_hidden_layers=layers,
        num_attention_heads=hidden // 64,
        num_key_value_heads=hidden // 64,
        max_position_embeddings=4096,
    )
    LlamaForCausalLM(config).save_pretrained(folder)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=16000)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()

    from ftjobs.client.models import FullMethod, LoraMethod, PromptTuningMethod, Task
    from ftjobs.jobs.training.preflight import GiB, estimate, model_shape, shard

    methods = {"full": FullMethod(), "lora": LoraMethod(r=16, alpha=32),
               "prompt_tuning": PromptTuningMethod(num_virtual_tokens=16)}  # fmt: skip
    rows = []
    with tempfile.TemporaryDirectory(prefix="ftjobs-preflight-") as tmp:
        folder = Path(tmp) / "model"
        build(folder, args.hidden, args.layers, args.vocab)
        for name, method, checkpointing, processes in CONFIGS:
            shape = model_shape(folder, Task.causal_lm, None, methods[method])
            seq = args.seq + (16 if method == "prompt_tuning" else 0)  # the virtual tokens join the sequence
            parts = estimate(shape, args.batch, seq, checkpointing, Task.causal_lm, "cpu")
            cfg = {"method": method, "checkpointing": checkpointing, "batch": args.batch, "seq": args.seq,
                   "steps": args.steps, "vocab": args.vocab, "processes": processes}  # fmt: skip
            command = [sys.executable, "-c", CHILD]
            env = dict(os.environ)
            if processes > 1:  # FSDP ranks (gloo), the estimate per rank; the larger rank peak is compared
                parts = shard(parts, processes, "cpu")
                script = Path(tmp) / "child.py"
                script.write_text(CHILD)
                command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                           f"--nproc_per_node={processes}", str(script)]  # fmt: skip
                env.update(FTJOBS_SHARDING="fsdp", ACCELERATE_USE_CPU="true", OMP_NUM_THREADS="1")
            out = str(Path(tmp) / name.replace(" ", "-").replace(",", ""))
            done = subprocess.run([*command, str(folder), out, json.dumps(cfg)], capture_output=True, text=True,
                                  cwd=REPO, env=env)  # fmt: skip
            if done.returncode != 0:
                print(done.stderr[-3000:], file=sys.stderr)
                return 1
            ranks = [json.loads(line[4:]) for line in done.stdout.splitlines() if line.startswith("RSS ")]
            got = max(ranks, key=lambda r: r["peak"] - r["before"])
            measured = got["peak"] - got["before"]
            rows.append({"config": name, "parameters": shape.parameters, "trainable": shape.trainable,
                         "estimate": sum(parts.values()), "parts": parts, "measured": measured,
                         "before": got["before"], "peak": got["peak"]})  # fmt: skip
            print(
                f"{name}: estimate {sum(parts.values()) / GiB:.3f} GiB, measured {measured / GiB:.3f} GiB", flush=True
            )
    print(f"\nllama-shaped: hidden {args.hidden}, {args.layers} layers, vocab {args.vocab}; batch {args.batch} x "
          f"seq {args.seq}, {args.steps} steps, CPU fp32")  # fmt: skip
    print(f"{'config':22}{'params':>12}{'trainable':>12}{'estimate GiB':>14}{'measured GiB':>14}{'est/meas':>10}"
          f"{'peak RSS GiB':>14}{'(est+before)/peak':>19}")  # fmt: skip
    for r in rows:
        print(f"{r['config']:22}{r['parameters']:>12,}{r['trainable']:>12,}{r['estimate'] / GiB:>14.3f}"
              f"{r['measured'] / GiB:>14.3f}{r['estimate'] / r['measured']:>10.2f}{r['peak'] / GiB:>14.3f}"
              f"{(r['estimate'] + r['before']) / r['peak']:>19.2f}")  # fmt: skip
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
