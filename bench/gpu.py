"""LoRA SFT throughput and memory on a GPU: padded vs packed vs packed + Liger kernels, QLoRA, and ftjobs' own path.

A ~1.1B llama-shaped model (TinyLlama's shape: hidden 2048, 22 layers, GQA 32/4 heads, vocab 32000) is built in
code with random weights and saved once; the data is random tokens with variable lengths (log-normal, 32 to
--max-len tokens, like instruction data). Each case trains --steps LoRA steps (r 16 on every linear layer of
the blocks) in a fresh process, on the same examples in the same order:

  hf padded         plain HF Trainer, bf16 weights, batches padded to their longest example
  hf packed         plain HF Trainer, DataCollatorWithFlattening: no padding, position_ids mark each example
                    (transformers builds the per-example mask from them)
  hf packed+liger   the same with Liger kernels (fused RMSNorm, SwiGLU, RoPE, linear cross-entropy), if
                    liger-kernel imports
  hf qlora padded   4-bit NF4 base (bitsandbytes), bf16 compute, padded
  ftjobs padded     ftjobs' path: load_model (fp32 weights, bf16 autocast), apply_method, PadCollator (to a
                    multiple of 8), the job's TrainingArguments and JobTrainer

Reported per case: real (non-padding) tokens per second over the timed steps (the first --warmup steps are
left out), peak GPU memory (torch.cuda.max_memory_allocated) and the ratio to `hf padded`. One JSON object
(with the versions of torch, transformers, peft ...) and a table. The hf cases import nothing of ftjobs: on a GPU
image without ftjobs' dependencies they still run, and `ftjobs padded` alone reports the import error. Without a
CUDA GPU it prints a skip line and exits 0 (`--tiny --cpu` runs a small smoke version: tests/test_bench_gpu.py).
On a lent GPU machine, bench/gpu_check.sh runs it.

    .venv/bin/python bench/gpu.py [--steps 30] [--batch 8] [--max-len 2048] [--out gpu.json]
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

CASES = ["hf padded", "hf packed", "hf packed+liger", "hf qlora padded", "ftjobs padded"]
SHAPE_1B = {"hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 22, "num_attention_heads": 32,
            "num_key_value_heads": 4, "vocab_size": 32000}  # fmt: skip
SHAPE_TINY = {"hidden_size": 128, "intermediate_size": 344, "num_hidden_layers": 2, "num_attention_heads": 4,
              "num_key_value_heads": 2, "vocab_size": 1000}  # fmt: skip
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def build_model(folder: Path, tiny: bool) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**(SHAPE_TINY if tiny else SHAPE_1B), max_position_embeddings=8192, tie_word_embeddings=False)
    torch.manual_seed(0)
    LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(folder)


def make_data(n: int, max_len: int, vocab: int, seed: int = 0) -> list[list[int]]:
    """Variable-length examples: log-normal lengths (median ~max_len/6), clipped to [32, max_len]."""
    import random

    rng = random.Random(seed)
    lengths = [min(max_len, max(32, int(rng.lognormvariate(math.log(max_len / 6), 0.8)))) for _ in range(n)]
    return [[rng.randrange(5, vocab) for _ in range(length)] for length in lengths]


# ----------------------------------------------------------------------------- one case, in its own process


def run_case(case: str, folder: Path, data_file: Path, args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, DataCollatorWithFlattening, Trainer, TrainingArguments

    cuda = torch.cuda.is_available()
    examples = json.loads(data_file.read_text())
    rows = [{"input_ids": ids, "attention_mask": [1] * len(ids), "labels": list(ids)} for ids in examples]
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=TARGETS, task_type="CAUSAL_LM")
    bf16 = cuda and torch.cuda.is_bf16_supported()
    common = dict(output_dir=str(Path(args.work) / case.replace(" ", "_")), report_to="none", max_steps=args.steps,
                  per_device_train_batch_size=args.batch, learning_rate=1e-4, logging_steps=10, save_strategy="no",
                  disable_tqdm=True, remove_unused_columns=False, dataloader_num_workers=0, seed=0, data_seed=0,
                  gradient_checkpointing=args.checkpointing, bf16=bf16,
                  include_num_input_tokens_seen="non_padding")  # fmt: skip
    if case.startswith("ftjobs"):
        trainer = _ftjobs_trainer(folder, rows, args, common)
    else:
        kw: dict[str, Any] = {"dtype": torch.bfloat16 if bf16 else torch.float32}
        if "qlora" in case:
            from peft import prepare_model_for_kbit_training
            from transformers import BitsAndBytesConfig

            kw["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=kw["dtype"]
            )
        if "liger" in case:
            from liger_kernel.transformers import apply_liger_kernel_to_llama

            apply_liger_kernel_to_llama()  # patches the llama modules before the model is built
        model = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="sdpa", **kw)
        if "qlora" in case:
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=args.checkpointing)
        model = get_peft_model(model, lora)
        collator = DataCollatorWithFlattening() if "packed" in case else _PadToLongest()
        trainer = Trainer(model=model, args=TrainingArguments(**common), train_dataset=rows, data_collator=collator)

    timer = _Timer(args.warmup, cuda)
    trainer.add_callback(timer)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    return {"case": case, **timer.result(), "peak_gpu_bytes": torch.cuda.max_memory_allocated() if cuda else None}


class _PadToLongest:
    """The hf cases' padding, ftjobs' PadCollator(0, 8) restated: input_ids with 0, labels with -100, the mask with
    0, to the batch's longest rounded up to 8. Its own copy: the hf cases import nothing of ftjobs (and none of its
    dependencies), so they run wherever torch, transformers and peft do (a GPU image without ftjobs installed)."""

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        longest = -(-max(len(f["input_ids"]) for f in features) // 8) * 8
        pads = {"input_ids": 0, "labels": -100, "attention_mask": 0}
        return {key: torch.tensor([f[key] + [pad] * (longest - len(f[key])) for f in features], dtype=torch.long)
                for key, pad in pads.items()}  # fmt: skip


def _pad_collator() -> Any:
    from ftjobs.jobs.training.trainer import PadCollator

    return PadCollator(0, 8)


def _ftjobs_trainer(folder: Path, rows: list[dict[str, Any]], args: argparse.Namespace, common: dict) -> Any:
    """ftjobs' own pieces: its loader, LoRA through apply_method, its collator, arguments and Trainer subclass."""
    import torch

    from ftjobs.client.models import Hyperparameters, LoraMethod, Task
    from ftjobs.jobs.data.inputs import load_model
    from ftjobs.jobs.training.methods import apply_method
    from ftjobs.jobs.training.trainer import JobTrainer, training_arguments

    model = load_model(folder, Task.causal_lm, None)
    model = apply_method(model, LoraMethod(r=16, alpha=32, target_modules=TARGETS), Task.causal_lm)
    if torch.cuda.is_available():
        model = model.to("cuda")
    hp = Hyperparameters(
        batch_size=args.batch, max_steps=args.steps, learning_rate=1e-4, max_seq_length=args.max_len, seed=0
    )
    targs = training_arguments(hp, Path(common["output_dir"]), [], 10, "no", {}, {}, causal=True)
    targs.gradient_checkpointing = args.checkpointing
    return JobTrainer(model=model, args=targs, train_dataset=rows, data_collator=_pad_collator())


class _Timer(TrainerCallback):
    """Wall time and real tokens of the steps after the warm-up ones (a CUDA sync at each step's edges)."""

    def __init__(self, warmup: int, cuda: bool) -> None:
        self.warmup, self.cuda = warmup, cuda
        self.started: float | None = None
        self.tokens_at_start = 0
        self.tokens = 0
        self.steps = 0
        self.seconds = 0.0

    def _sync(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()

    def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        if state.global_step == self.warmup:
            self._sync()
            self.started, self.tokens_at_start = time.perf_counter(), state.num_input_tokens_seen
        elif state.global_step == state.max_steps and self.started is not None:
            self._sync()
            self.seconds = time.perf_counter() - self.started
            self.steps = state.global_step - self.warmup
            self.tokens = state.num_input_tokens_seen - self.tokens_at_start

    def result(self) -> dict[str, Any]:
        return {"steps": self.steps, "seconds": round(self.seconds, 3), "tokens": self.tokens,
                "tokens_per_s": round(self.tokens / self.seconds, 1) if self.seconds else None}  # fmt: skip


# ----------------------------------------------------------------------------- the driver


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--max-len", type=int, default=2048)
    parser.add_argument("--checkpointing", action="store_true", help="gradient checkpointing in every case")
    parser.add_argument("--tiny", action="store_true", help="a tiny model: a smoke test of the script")
    parser.add_argument("--cpu", action="store_true", help="run without a GPU (with --tiny: checks the script)")
    parser.add_argument("--out", help="also write the JSON here")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # internal: run one case in this process
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.warmup < 1 or args.steps <= args.warmup:  # the timer starts at the end of step --warmup, times the rest
        parser.error(f"--steps ({args.steps}) must be more than --warmup ({args.warmup}), and --warmup at least 1")

    if args.case:  # a child: one case, one JSON line
        print(json.dumps(run_case(args.case, Path(args.model), Path(args.data), args)), flush=True)
        return 0

    import torch

    if not torch.cuda.is_available() and not args.cpu:
        print(json.dumps({"skipped": "no CUDA GPU on this machine (bench/gpu.py measures GPU training)"}))
        return 0
    liger = _importable("liger_kernel")
    qlora = torch.cuda.is_available() and _importable("bitsandbytes")
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="ftjobs-gpu-bench-") as tmp:
        work = Path(tmp)
        build_model(work / "model", args.tiny)
        vocab = (SHAPE_TINY if args.tiny else SHAPE_1B)["vocab_size"]
        data = make_data(args.batch * args.steps, args.max_len, vocab)
        (work / "data.json").write_text(json.dumps(data))
        for case in CASES:
            if ("liger" in case and not liger) or ("qlora" in case and not qlora):
                results.append({"case": case, "skipped": "liger-kernel not installed" if "liger" in case
                                else "needs CUDA and bitsandbytes"})  # fmt: skip
                continue
            cmd = [sys.executable, __file__, "--case", case, "--model", str(work / "model"),
                   "--data", str(work / "data.json"), "--work", str(work), "--steps", str(args.steps),
                   "--warmup", str(args.warmup), "--batch", str(args.batch), "--max-len", str(args.max_len)]  # fmt: skip
            if args.checkpointing:
                cmd.append("--checkpointing")
            done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
            if done.returncode != 0:
                results.append({"case": case, "error": done.stderr.strip().splitlines()[-1] if done.stderr else "?"})
                print(done.stderr[-2000:], file=sys.stderr)
            else:
                results.append(json.loads(done.stdout.strip().splitlines()[-1]))
                print(f"{case}: {results[-1]}", file=sys.stderr, flush=True)
            if args.out:  # after each case: a run stopped at its time limit keeps the cases it finished
                Path(args.out).write_text(json.dumps({**_summary(args, results), "partial": True}, indent=2))
    summary = _summary(args, results)
    device = summary["device"]
    print(f"\n{device}, {summary['model']}, LoRA r16, batch {args.batch}, lengths 32..{args.max_len}, "
          f"{args.steps} steps ({args.warmup} warm-up)")  # fmt: skip
    print(f"{'case':18}{'tokens/s':>12}{'x hf padded':>13}{'peak GiB':>10}{'x memory':>10}")
    for r in results:
        if "tokens_per_s" not in r:
            print(f"{r['case']:18}  {r.get('skipped') or r.get('error')}")
            continue
        peak = r["peak_gpu_bytes"] / 1024**3 if r.get("peak_gpu_bytes") else float("nan")
        print(f"{r['case']:18}{r['tokens_per_s'] or 0:>12.0f}{r.get('speed_vs_hf_padded', float('nan')):>13.2f}"
              f"{peak:>10.2f}{r.get('memory_vs_hf_padded', float('nan')):>10.2f}")  # fmt: skip
    print(json.dumps(summary))
    if args.out:
        Path(args.out).write_text(json.dumps(summary, indent=2))
    return 0


def _summary(args: argparse.Namespace, results: list[dict[str, Any]]) -> dict[str, Any]:
    """The run's JSON: its settings, the versions, each case with its ratios to `hf padded`."""
    import torch

    base = next((r for r in results if r["case"] == "hf padded" and r.get("tokens_per_s")), None)
    for r in results:
        if base and r.get("tokens_per_s"):
            r["speed_vs_hf_padded"] = round(r["tokens_per_s"] / base["tokens_per_s"], 3)
            if base.get("peak_gpu_bytes") and r.get("peak_gpu_bytes"):
                r["memory_vs_hf_padded"] = round(r["peak_gpu_bytes"] / base["peak_gpu_bytes"], 3)
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    return {"device": device, "model": "tiny" if args.tiny else "llama-1.1B", "steps": args.steps,
            "warmup": args.warmup, "batch": args.batch, "max_len": args.max_len, "checkpointing": args.checkpointing,
            "versions": _versions(), "results": results}  # fmt: skip


def _versions() -> dict[str, str | None]:
    """The installed versions that the numbers depend on (a GPU image's own torch and transformers may differ from
    the project's pins)."""
    from importlib.metadata import PackageNotFoundError, version

    found: dict[str, str | None] = {}
    for name in ("torch", "transformers", "peft", "accelerate", "liger-kernel", "bitsandbytes"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    return found


def _importable(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


if __name__ == "__main__":
    raise SystemExit(main())
