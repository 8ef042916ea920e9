"""What does each fine-tuning method cost? Train speed and peak memory, side by side in one run.

Each method runs in its own fresh interpreter (so peak RSS is that method's alone): the tiny causal LM of the
test suite (or --hidden/--layers for a wider one), ftjobs.jobs.training.methods.apply_method, a Trainer run of --steps steps on
fixed text, timed after one warm-up step. Prints, per method: trainable parameters, training tokens/s (non-pad
input tokens per second; virtual tokens not counted), the base weights' memory (4-bit for qlora), peak RSS
(ru_maxrss) and both as ratios to `full`.

    .venv/bin/python bench/methods.py [--steps 30] [--batch-size 8] [--hidden 128] [--layers 2]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

METHODS = {
    "full": {"type": "full"},
    "lora": {"type": "lora", "r": 8, "alpha": 16},
    "lora+dora": {"type": "lora", "r": 8, "alpha": 16, "use_dora": True},
    "qlora": {"type": "lora", "r": 8, "alpha": 16, "quantize": "4bit"},  # needs bitsandbytes (ftjobs[qlora])
    "ia3": {"type": "ia3"},
    "prompt_tuning": {"type": "prompt_tuning", "num_virtual_tokens": 20},
    "prefix_tuning": {"type": "prefix_tuning", "num_virtual_tokens": 20},
    "p_tuning": {"type": "p_tuning", "num_virtual_tokens": 20, "encoder_hidden_size": 128},
    "adapter": {"type": "adapter", "reduction_factor": 16},
}

CHILD = """
import json, resource, sys, time
sys.path.insert(0, {repo!r})
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainerCallback, TrainingArguments
from ftjobs.client.models import JobCreate, Task
from ftjobs.jobs.training.methods import apply_method, load_options, parameter_counts
from ftjobs.jobs.training.trainer import PadCollator

torch.set_num_threads({threads})
spec, model_dir, steps, batch = json.loads({spec!r}), {model_dir!r}, {steps}, {batch}
method = JobCreate.model_validate({{"model": "m", "training_file": "file-" + "0" * 20, "method": spec}}).method
tok = AutoTokenizer.from_pretrained(model_dir)
torch.manual_seed(0)
base = AutoModelForCausalLM.from_pretrained(model_dir, **load_options(method))
weights_mb = base.get_memory_footprint() / 1e6
model = apply_method(base, method, Task.causal_lm)
trainable, total = parameter_counts(model)
text = "what is the colour of the sky ? the sky is blue . say hello . hello there , how are you ? "
ids = tok(text * 4, truncation=True, max_length=128)["input_ids"]
examples = [{{"input_ids": ids, "attention_mask": [1] * len(ids), "labels": ids}}] * (batch * (steps + 1))

class Clock(TrainerCallback):
    def on_step_end(self, args, state, control, **kw):
        if state.global_step == 1:  # after one warm-up step
            self.t0 = time.perf_counter()

clock = Clock()
args = TrainingArguments(output_dir={out!r}, per_device_train_batch_size=batch, max_steps=steps + 1,
                         learning_rate=1e-3, report_to="none", save_strategy="no", logging_strategy="no",
                         disable_tqdm=True, remove_unused_columns=False, label_names=["labels"], use_cpu=True)
Trainer(model=model, args=args, train_dataset=examples, data_collator=PadCollator(tok.pad_token_id),
        callbacks=[clock]).train()
seconds = time.perf_counter() - clock.t0
print(json.dumps({{"trainable": trainable, "total": total, "tokens_per_s": steps * batch * len(ids) / seconds,
                  "weights_mb": weights_mb,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=128, help="hidden size of the tiny Llama (test suite: 128)")
    parser.add_argument("--layers", type=int, default=2)
    a = parser.parse_args()
    sys.path.insert(0, str(REPO))
    with tempfile.TemporaryDirectory(prefix="ftjobs-bench-") as tmp:
        model_dir = _build_model(Path(tmp), a.hidden, a.layers)
        rows = {}
        for name, spec in METHODS.items():
            code = CHILD.format(repo=str(REPO), spec=json.dumps(spec), model_dir=str(model_dir), steps=a.steps,
                                batch=a.batch_size, threads=a.threads, out=str(Path(tmp) / "trainer"))
            done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
            if done.returncode != 0:
                rows[name] = {"error": done.stderr.strip().splitlines()[-1]}
            else:
                rows[name] = json.loads(done.stdout.strip().splitlines()[-1])
            print(f"  {name}: {rows[name]}", file=sys.stderr)
    full = rows["full"]
    print(f"tiny Llama hidden={a.hidden} layers={a.layers}, batch {a.batch_size}, {a.steps} timed steps, CPU")
    print(f"{'method':<15}{'trainable':>12}{'% of total':>11}{'tokens/s':>10}{'base MB':>9}{'peak RSS MB':>13}"
          f"{'tok/s vs full':>15}{'RSS vs full':>13}")
    for name, r in rows.items():
        if "error" in r:
            print(f"{name:<15}  failed: {r['error']}")
            continue
        print(f"{name:<15}{r['trainable']:>12,}{100 * r['trainable'] / r['total']:>10.2f}%{r['tokens_per_s']:>10.0f}"
              f"{r['weights_mb']:>9.1f}"
              f"{r['peak_rss_mb']:>13.0f}{r['tokens_per_s'] / full['tokens_per_s']:>15.2f}"
              f"{r['peak_rss_mb'] / full['peak_rss_mb']:>13.2f}")


def _build_model(root: Path, hidden: int, layers: int) -> Path:
    if hidden == 128 and layers == 2:
        from tests.tiny_models import build_tiny_causal_lm

        return build_tiny_causal_lm(root / "tiny-causal-lm")
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from tests.tiny_models import build_tiny_tokenizer

    tok = build_tiny_tokenizer()
    config = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=4,
                         max_position_embeddings=512, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    path = root / f"llama-{hidden}x{layers}"
    tok.save_pretrained(path)
    LlamaForCausalLM(config).save_pretrained(path)
    return path


if __name__ == "__main__":
    main()
