"""What each export format writes beside its weights, and the GGUF and vLLM exports' own checks (the serving
commands go in the export's README.md; jobs/export_job.py runs these, jobs/outputs/export_gguf.py writes GGUF)."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
from pathlib import Path
from typing import Any

from ftjobs.client.models import JobCreate
from ftjobs.client.models.exports import Export
from ftjobs.jobs.outputs import export_gguf, export_weights

VLLM_DEFAULT_MAX_LORA_RANK = 16  # vllm serve's --max-lora-rank default
GREEDY_TOKENS = 8  # tokens generated per prompt when llama.cpp is there to compare with


def served_name(export: Export, request: JobCreate) -> str:
    if export.name:
        return export.name
    suffix = re.sub(r"[^A-Za-z0-9._-]+", "-", request.suffix or "").strip("-.")
    return suffix[:64] or export.job_id


def write_readme(out: Path, text: str) -> None:
    (out / "README.md").write_text(text.rstrip() + "\n", encoding="utf-8")


def safetensors_readme(shown: str, request: JobCreate, export: Export) -> str:
    auto = export_weights.AUTO_CLASSES.get(request.task.value, "AutoModelForCausalLM")
    serve = "" if request.task.value == "classification" else (
        "\nServe it as it is: `vllm serve ./model` or TGI's `text-generation-launcher --model-id ./model`.\n"
    )  # fmt: skip
    return f"""# Job {export.job_id}: merged model ({export.dtype.value if export.dtype else ""})

`model/` is the job's {request.method.type} weights merged into the base model `{shown}` (peft merge_and_unload),
saved as safetensors in {export.dtype.value if export.dtype else ""} with its tokenizer and config: it loads without
peft. After writing it was reloaded and its logits compared with the job's unmerged model (see manifest.json).

```python
from transformers import {auto}, AutoTokenizer

model = {auto}.from_pretrained("model")
tokenizer = AutoTokenizer.from_pretrained("model")
```
{serve}"""


def write_vllm(
    out: Path, weights: export_weights.Weights, request: JobCreate, export: Export, shown: str
) -> dict[str, Any]:
    """adapter/ as vLLM loads a LoRA (adapter_config.json + adapter_model.safetensors only) and the README with the
    `vllm serve` line; checks that the adapter holds only LoRA A/B matrices (no modules_to_save) of its rank."""
    from safetensors import safe_open

    config = json.loads((weights.folder / "adapter_config.json").read_text(encoding="utf-8"))
    if config.get("peft_type") != "LORA" or config.get("use_dora"):
        raise export_weights.CheckFailed("vLLM serves plain LoRA adapters only (not DoRA or another peft type)")
    if config.get("modules_to_save"):
        raise export_weights.CheckFailed(f"the adapter trains whole modules {config['modules_to_save']} "
                                         "(modules_to_save), which vLLM's LoRA loader does not take")  # fmt: skip
    rank = int(config["r"])
    adapter = out / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    shutil.copyfile(weights.folder / "adapter_model.safetensors", adapter / "adapter_model.safetensors")
    targets: set[str] = set()
    with safe_open(str(adapter / "adapter_model.safetensors"), framework="numpy") as fh:
        names = list(fh.keys())
        for key in names:
            match = re.search(r"\.([A-Za-z0-9_]+)\.lora_([AB])\.weight$", key)
            if match is None:
                raise export_weights.CheckFailed(f"adapter tensor {key!r} is not a LoRA A/B matrix")
            shape = fh.get_slice(key).get_shape()
            if (shape[0] if match.group(2) == "A" else shape[-1]) != rank:
                raise export_weights.CheckFailed(f"adapter tensor {key!r} has shape {shape}, not rank {rank}")
            targets.add(match.group(1))
    name = served_name(export, request)
    flags = f" --max-lora-rank {rank}" if rank > VLLM_DEFAULT_MAX_LORA_RANK else ""
    command = f"vllm serve {shown} --enable-lora --lora-modules {name}=./adapter{flags}"
    write_readme(
        out,
        f"""# Job {export.job_id}: LoRA adapter for vLLM

`adapter/` is the job's LoRA adapter (rank {rank}, on {", ".join(sorted(targets))}) on the base model `{shown}`.
Start vLLM on your copy of the base model with the adapter as a served model named `{name}`:

```
{command}
```

Then ask for `"model": "{name}"` on vLLM's OpenAI-compatible API (`/v1/completions`, `/v1/chat/completions`).
""",
    )
    return {"vllm": {"command": command, "rank": rank, "tensors": len(names), "target_modules": sorted(targets)}}


def gguf_readme(export: Export, shown: str, adapter: bool) -> str:
    lines = [
        f"# Job {export.job_id}: GGUF ({export.quantization.value if export.quantization else ''})",
        "",
        f"`model.gguf` is the job's weights merged into the base model `{shown}`, for llama.cpp and Ollama:",
        "",
        "```",
        'llama-cli -m model.gguf -p "your prompt" -n 64',
        "llama-server -m model.gguf --port 8080",
        "ollama create my-model -f Modelfile && ollama run my-model",
        "```",
    ]
    if adapter:
        lines += [
            "",
            "`adapter.gguf` is the job's LoRA adapter alone (llama.cpp's GGUF LoRA form), for a GGUF of the base:",
            "",
            "```",
            'llama-cli -m base-model.gguf --lora adapter.gguf -p "your prompt"',
            "```",
        ]
    return "\n".join(lines)


def write_gguf(
    out: Path, full: Any, tokenizer: Any, weights: export_weights.Weights, request: JobCreate, export: Export,
    shown: str, reference: Any, batch: dict[str, Any], note: Any,
) -> dict[str, Any]:  # fmt: skip
    """model.gguf (+ adapter.gguf for LoRA), re-read and loaded back; returns the checks."""
    quantization = export.quantization.value if export.quantization else "f16"
    written = export_gguf.write_model(out / "model.gguf", full, tokenizer, quantization, shown)
    config = full.config
    expected = {
        "general.architecture": "llama", "general.type": "model", "llama.block_count": config.num_hidden_layers,
        "llama.embedding_length": config.hidden_size, "llama.attention.head_count": config.num_attention_heads,
        "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.bos_token_id": tokenizer.bos_token_id,
        "tokenizer.ggml.eos_token_id": tokenizer.eos_token_id,
    }  # fmt: skip
    checks: dict[str, Any] = {"model.gguf": export_gguf.reread(out / "model.gguf", written, expected)}
    note(f"wrote model.gguf ({quantization}, {len(written)} tensors) and re-read it")
    checks["transformers_gguf"] = load_back(out, tokenizer, reference, batch, quantization)
    lora = (
        weights.kind == "adapter" and request.method.type == "lora" and not getattr(request.method, "use_dora", False)
    )
    if lora:
        adapter_written = export_gguf.write_lora_adapter(out / "adapter.gguf", weights.folder, config, shown)
        adapter_expected = {"general.architecture": "llama", "general.type": "adapter", "adapter.type": "lora"}
        checks["adapter.gguf"] = export_gguf.reread(out / "adapter.gguf", adapter_written, adapter_expected)
        note(f"wrote adapter.gguf ({len(adapter_written)} tensors) and re-read it")
    if importable("llama_cpp"):
        checks["llama_cpp"] = llama_cpp_check(out / "model.gguf", full, tokenizer)
        note("loaded model.gguf with llama.cpp and compared its greedy tokens")
    else:
        checks["llama_cpp"] = {"skipped": "llama-cpp-python is not installed on this worker"}
    (out / "Modelfile").write_text("FROM ./model.gguf\n", encoding="utf-8")
    write_readme(out, gguf_readme(export, shown, lora))
    return checks


def importable(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def load_back(out: Path, tokenizer: Any, reference: Any, batch: dict[str, Any], quantization: str) -> dict[str, Any]:
    """model.gguf through transformers' own GGUF reader (dequantized, q/k un-permuted, tokenizer rebuilt from the
    metadata): the same token ids for the prompts, logits within the quantization's tolerance."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(out, gguf_file="model.gguf", dtype=torch.float32).eval()
    result = export_weights.compare(reference, export_weights.logits(model, batch), f"model.gguf ({quantization})",
                                    export_weights.TOLERANCE[quantization])  # fmt: skip
    rebuilt = AutoTokenizer.from_pretrained(out, gguf_file="model.gguf")
    same = [rebuilt(p).input_ids == tokenizer(p).input_ids for p in export_weights.PROMPTS]
    if not all(same):
        raise export_weights.CheckFailed("model.gguf's tokenizer splits the check prompts differently")
    return {**result, "tokenizer_ids_equal": True}


def llama_cpp_check(path: Path, full: Any, tokenizer: Any) -> dict[str, Any]:
    """llama.cpp loads model.gguf (a failure to load fails the export): whether it tokenizes the prompts as the HF
    tokenizer does and whether its greedy tokens equal the merged HF model's (both stop at EOS or after
    GREEDY_TOKENS), recorded (a near-tie may flip a token under quantization: not a failure by itself)."""
    import torch
    from llama_cpp import Llama

    llm = Llama(model_path=str(path), n_ctx=256, n_threads=1, verbose=False)
    results = []
    for prompt in export_weights.PROMPTS:
        ids = tokenizer(prompt).input_ids
        with torch.no_grad():
            out = full.generate(torch.tensor([ids]), max_new_tokens=GREEDY_TOKENS, do_sample=False,
                                pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)  # fmt: skip
        hf = until_eos(out[0, len(ids) :].tolist(), tokenizer.eos_token_id)
        stream = llm.generate(ids, temp=0.0, top_k=1)
        ours = until_eos([int(t) for _, t in zip(range(GREEDY_TOKENS), stream, strict=False)], tokenizer.eos_token_id)
        same_ids = llm.tokenize(prompt.encode(), add_bos=True, special=False) == ids
        results.append({"prompt": prompt, "tokenized_same": same_ids, "hf": hf, "llama_cpp": ours})
    return {"greedy": results, "greedy_equal": all(r["hf"] == r["llama_cpp"] for r in results),
               "tokenized_same": all(r["tokenized_same"] for r in results)}  # fmt: skip


def until_eos(tokens: list[int], eos: int | None) -> list[int]:
    return tokens[: tokens.index(eos)] if eos is not None and eos in tokens else tokens
