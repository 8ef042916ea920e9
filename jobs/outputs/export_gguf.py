"""GGUF for llama.cpp / Ollama, written with the `gguf` package (llama.cpp's own writer), as llama.cpp's
convert_hf_to_gguf.py and convert_lora_to_gguf.py lay it out for the llama architecture:

- the model: `general.architecture` llama, the `llama.*` hyperparameters, the tokenizer as `tokenizer.ggml.*`
  (byte-level BPE: model `gpt2`, its pre-tokenizer, tokens, token types, merges, special ids, chat template), the
  tensors under GGUF names (`blk.N.attn_q.weight` ...; q/k rows permuted for GGML's rope, as the converter does),
  2-D tensors in F16 or Q8_0 (`gguf.quants.quantize`), norms in F32; tied embeddings have no `output.weight`;
- a LoRA adapter: `general.type` adapter, `adapter.type` lora, `adapter.lora.alpha`, tensors `<name>.lora_a`
  (r x in) and `<name>.lora_b` (out x r, q/k rows permuted), F32. llama.cpp scales by alpha / r, so rsLoRA's
  scale is folded into the alpha written.

`reread` checks a written file with GGUFReader: the tensors (names, shapes, types) and metadata expected.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

PERMUTED = ("attn_q", "attn_k")
Q8_BLOCK = 32  # Q8_0 quantizes rows in blocks of 32 values; a row of another length stays F16


class GGUFUnsupported(ValueError):
    """The model or tokenizer is outside what this writer maps (the export fails with this message)."""


def permute(weights: np.ndarray, n_head: int) -> np.ndarray:
    """HF's q/k row order (rotate_half) into GGML's interleaved rope order (convert_hf_to_gguf's LlamaModel.permute)."""
    return (
        weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def heads_of(name: str, config: Any) -> int | None:
    """The head count a q/k tensor is permuted by (None: not a q/k tensor)."""
    kind = name.split(".")[2] if name.startswith("blk.") else ""
    if kind == "attn_q":
        return int(config.num_attention_heads)
    if kind == "attn_k":
        return int(getattr(config, "num_key_value_heads", None) or config.num_attention_heads)
    return None


def gguf_names(state: dict[str, Any], config: Any) -> dict[str, str]:
    """HF tensor name -> GGUF name for a llama state dict (tied lm_head left out)."""
    import gguf

    mapping = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, int(config.num_hidden_layers))
    names = {}
    for hf in state:
        if hf == "lm_head.weight" and getattr(config, "tie_word_embeddings", False):
            continue
        name = mapping.get_name(hf, try_suffixes=(".weight", ".bias"))
        if name is None or hf.endswith("rotary_emb.inv_freq"):
            if hf.endswith("rotary_emb.inv_freq"):
                continue
            raise GGUFUnsupported(f"tensor {hf!r} has no GGUF name in the llama architecture")
        names[hf] = name
    return names


def write_model(path: Path, model: Any, tokenizer: Any, quantization: str, name: str) -> dict[str, Any]:
    """The merged llama model as GGUF (`f16` or `q8_0`); returns {gguf name: (shape, type)} of what was written."""
    import gguf

    config = model.config
    check_llama(config)
    state = {k: v.detach().float().cpu().numpy() for k, v in model.state_dict().items()}
    writer = gguf.GGUFWriter(str(path), "llama")
    file_type = gguf.LlamaFileType.MOSTLY_Q8_0 if quantization == "q8_0" else gguf.LlamaFileType.MOSTLY_F16
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name)
    add_hyperparameters(writer, config, len(tokenizer))
    writer.add_file_type(int(file_type))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    add_tokenizer(writer, tokenizer, int(config.vocab_size))
    written: dict[str, Any] = {}
    for hf, gname in gguf_names(state, config).items():
        data = state[hf]
        heads = heads_of(gname, config)
        if heads is not None:
            data = permute(data, heads)
        if data.ndim == 1:
            array, qtype = data.astype(np.float32), gguf.GGMLQuantizationType.F32
        elif quantization == "q8_0" and data.shape[-1] % Q8_BLOCK == 0:
            qtype = gguf.GGMLQuantizationType.Q8_0
            array = gguf.quants.quantize(data.astype(np.float32), qtype)
        else:
            array, qtype = data.astype(np.float16), gguf.GGMLQuantizationType.F16
        writer.add_tensor(gname, array, raw_dtype=qtype if qtype == gguf.GGMLQuantizationType.Q8_0 else None)
        written[gname] = {"shape": list(data.shape), "type": qtype.name}
    finish(writer)
    return written


def write_lora_adapter(path: Path, adapter_dir: Path, config: Any, name: str) -> dict[str, Any]:
    """A peft LoRA adapter folder as a llama.cpp GGUF adapter; returns {gguf name: (shape, type)} written."""
    import gguf
    from safetensors.numpy import load_file

    lora = json.loads((adapter_dir / "adapter_config.json").read_text(encoding="utf-8"))
    if lora.get("use_dora") or lora.get("rank_pattern") or lora.get("alpha_pattern"):
        raise GGUFUnsupported("a DoRA or per-module-rank adapter has no llama.cpp LoRA form")
    r, alpha = int(lora["r"]), float(lora["lora_alpha"])
    scale = alpha / math.sqrt(r) if lora.get("use_rslora") else alpha / r
    tensors = load_file(str(adapter_dir / "adapter_model.safetensors"))
    pairs: dict[str, dict[str, np.ndarray]] = {}
    for key, value in tensors.items():
        part = "A" if ".lora_A." in key else "B" if ".lora_B." in key else None
        if part is None:
            raise GGUFUnsupported(f"adapter tensor {key!r} is not a LoRA A/B matrix (modules_to_save has no GGUF form)")
        base = key.replace("base_model.model.", "", 1).replace(f".lora_{part}.weight", ".weight")
        pairs.setdefault(base, {})[part] = value.astype(np.float32)
    mapping = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, int(config.num_hidden_layers))
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, scale * r)  # llama.cpp applies alpha / r
    writer.add_name(name)
    written: dict[str, Any] = {}
    for base, ab in sorted(pairs.items()):
        gname = mapping.get_name(base, try_suffixes=(".weight", ".bias"))
        if gname is None or set(ab) != {"A", "B"}:
            raise GGUFUnsupported(f"adapter tensor {base!r} has no llama.cpp LoRA form")
        a, b = ab["A"], ab["B"]  # (r, in), (out, r)
        heads = heads_of(gname, config)
        if heads is not None:
            b = permute(b, heads)  # rows are outputs: the same reordering as the base weight's
        for suffix, value in ((".lora_a", a), (".lora_b", b)):
            writer.add_tensor(gname + suffix, np.ascontiguousarray(value))
            written[gname + suffix] = {"shape": list(value.shape), "type": "F32"}
    finish(writer)
    return written


def finish(writer: Any) -> None:
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def check_llama(config: Any) -> None:
    if getattr(config, "model_type", None) != "llama":
        raise GGUFUnsupported(f"architecture {getattr(config, 'model_type', None)!r}: GGUF exports support llama")
    scaling = getattr(config, "rope_scaling", None) or {}
    kind = scaling.get("rope_type") or scaling.get("type") if isinstance(scaling, dict) else None
    if kind not in (None, "default", "linear"):
        raise GGUFUnsupported(f"rope scaling {kind!r} is not mapped to GGUF by this exporter")


def rope_theta(config: Any) -> float:
    """transformers 5 keeps it in rope_parameters; older configs as rope_theta."""
    params = getattr(config, "rope_parameters", None) or {}
    return float(params.get("rope_theta") or getattr(config, "rope_theta", None) or 10000.0)


def add_hyperparameters(writer: Any, config: Any, n_tokens: int) -> None:
    heads = int(config.num_attention_heads)
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
    writer.add_context_length(int(config.max_position_embeddings))
    writer.add_embedding_length(int(config.hidden_size))
    writer.add_feed_forward_length(int(config.intermediate_size))
    writer.add_block_count(int(config.num_hidden_layers))
    writer.add_head_count(heads)
    writer.add_head_count_kv(int(getattr(config, "num_key_value_heads", None) or heads))
    writer.add_rope_freq_base(rope_theta(config))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_vocab_size(int(config.vocab_size))
    writer.add_rope_dimension_count(head_dim)
    if head_dim != config.hidden_size // heads:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    scaling = getattr(config, "rope_scaling", None) or {}
    if isinstance(scaling, dict) and (scaling.get("rope_type") or scaling.get("type")) == "linear":
        import gguf

        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(scaling["factor"]))


def pre_tokenizer(spec: dict[str, Any]) -> str:
    """llama.cpp's name for a tokenizer.json's pre-tokenizer (how it splits text before BPE)."""
    pre = spec.get("pre_tokenizer") or {}
    parts = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    kinds = [p.get("type") for p in parts]
    if kinds == ["ByteLevel"] and parts[0].get("use_regex", True):
        return "gpt-2"
    if kinds == ["Digits", "ByteLevel"] and parts[0].get("individual_digits"):
        return "smollm"
    raise GGUFUnsupported(f"pre-tokenizer {kinds} is not one this exporter maps to llama.cpp")


def add_tokenizer(writer: Any, tokenizer: Any, vocab_size: int) -> None:
    """The byte-level BPE tokenizer as llama.cpp's `gpt2` tokenizer model."""
    import gguf

    backend = getattr(tokenizer, "backend_tokenizer", None) or getattr(tokenizer, "_tokenizer", None)
    if backend is None:
        raise GGUFUnsupported("the tokenizer has no tokenizer.json (a fast tokenizer) to convert")
    spec = json.loads(backend.to_str())
    model = spec.get("model") or {}
    if model.get("type") != "BPE" or model.get("byte_fallback"):
        raise GGUFUnsupported(f"tokenizer model {model.get('type')!r}: GGUF exports support byte-level BPE")
    pre = pre_tokenizer(spec)
    added = {t["id"]: t for t in spec.get("added_tokens", [])}
    by_id = {i: t for t, i in model["vocab"].items()} | {i: t["content"] for i, t in added.items()}
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
            continue
        tokens.append(by_id[i])
        if i in added:
            types.append(gguf.TokenType.CONTROL if added[i].get("special") else gguf.TokenType.USER_DEFINED)
        else:
            types.append(gguf.TokenType.NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    for kind in ("bos", "eos", "unk", "pad"):
        token_id = getattr(tokenizer, f"{kind}_token_id", None)
        if token_id is not None:
            getattr(writer, f"add_{kind}_token_id")(int(token_id))
    probe = tokenizer("a").input_ids  # does the tokenizer put BOS/EOS around a text itself?
    writer.add_add_bos_token(bool(probe) and probe[0] == tokenizer.bos_token_id)
    writer.add_add_eos_token(bool(probe) and probe[-1] == tokenizer.eos_token_id and tokenizer.eos_token_id is not None)
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, str):
        writer.add_chat_template(template)


def reread(path: Path, written: dict[str, Any], expected: dict[str, Any]) -> dict[str, Any]:
    """Read the file back with GGUFReader: every tensor written (name, shape, type) and the metadata `expected`
    (key -> value) are there; raises ValueError naming what differs; returns a summary for the export's checks."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    found = {t.name: t for t in reader.tensors}
    if set(found) != set(written):
        raise ValueError(f"{path.name}: tensors differ: missing {sorted(set(written) - set(found))[:5]}, "
                         f"unexpected {sorted(set(found) - set(written))[:5]}")  # fmt: skip
    for name, want in written.items():
        tensor = found[name]
        shape = [int(n) for n in reversed(tensor.shape.tolist())]  # GGUF lists ne (fastest-varying first)
        if shape != want["shape"] or tensor.tensor_type.name != want["type"]:
            raise ValueError(f"{path.name}: {name} is {shape} {tensor.tensor_type.name}, expected "
                             f"{want['shape']} {want['type']}")  # fmt: skip
    for key, value in expected.items():
        field = reader.get_field(key)
        if field is None:
            raise ValueError(f"{path.name}: metadata {key} is missing")
        got = field.contents()
        if got != value:
            raise ValueError(f"{path.name}: metadata {key} is {str(got)[:80]!r}, expected {str(value)[:80]!r}")
    return {"tensors": len(found), "metadata_keys": len(reader.fields), "checked_keys": sorted(expected)}
