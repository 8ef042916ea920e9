"""Exports for serving, end to end: a LoRA job on the tiny llama trained by a real worker, exported through the API
(the real client) by the same worker; the files are downloaded and checked here independently of the export's own
checks: merged safetensors reload with the unmerged model's logits, GGUF re-reads with the expected tensors and
metadata (and loads in llama.cpp where llama-cpp-python is installed), the vLLM folder holds the adapter alone."""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path

import pytest
import torch

from ftjobs.client.models import Hyperparameters, JobCreate, LoraMethod
from ftjobs.core import exports
from tests.jobs.helpers import store_root, submit, upload_rows, wait_for
from tests.jobs.test_train import qa_rows

PROMPTS = ["what is the colour of the sky ?", "say hello .", "the quick brown fox"]
WAIT_S = 300  # a loaded machine: the export merges, writes, reloads and checks in seconds, but give it room


def unmerged_logits(base: Path, adapter: Path, texts: list[str]) -> tuple[torch.Tensor, list[list[int]]]:
    """The job's model as it trained it (base + adapter, fp32): logits on `texts`, and their token ids."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(adapter)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32), adapter).eval()
    ids = [tok(t).input_ids for t in texts]
    with torch.no_grad():
        return torch.cat([model(torch.tensor([i])).logits[0] for i in ids]), ids


def test_a_lora_job_exports_to_safetensors_gguf_and_vllm(
    redis, env, worker, client, tiny_causal_lm, tmp_path, capsys
) -> None:  # type: ignore[no-untyped-def]
    request = JobCreate(
        model=str(tiny_causal_lm),
        training_file=upload_rows(env, qa_rows(16)),
        suffix="colours",
        method=LoraMethod(r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]),
        hyperparameters=Hyperparameters(
            n_epochs=1, batch_size=4, learning_rate=2e-2, max_seq_length=64, validation_split=0.0
        ),
        eval_generation_limit=0,  # the exports are under test, not the job's evaluation
        eval_samples=0,
    )
    job_id = submit(redis, env, request)
    job = wait_for(redis, job_id, worker=worker, timeout=WAIT_S)
    assert job["status"] == "succeeded", (job, worker.output()[-3000:])

    started = {
        "st": client.exports.create(job_id, format="safetensors", dtype="fp16"),
        "f16": client.exports.create(job_id, format="gguf"),  # quantization defaults to f16
        "q8": client.exports.create(job_id, format="gguf", quantization="q8_0"),
        "vllm": client.exports.create(job_id, format="vllm"),
    }
    assert started["f16"].quantization == "f16" and started["st"].status == "queued"
    done = {k: client.exports.wait(job_id, e.id, timeout=WAIT_S, poll_interval=0.5) for k, e in started.items()}
    for key, export in done.items():
        assert export.status == "succeeded", (key, export.error, worker.output()[-3000:])
    assert [e.id for e in client.exports.list(job_id).data] == sorted(e.id for e in started.values())
    from ftjobs.client.cli import main

    capsys.readouterr()
    assert main(["export", "list", job_id], client=client) == 0  # the CLI lists them
    listed_out = capsys.readouterr().out
    assert all(e.id in listed_out for e in done.values()), listed_out
    assert main(["--json", "export", "get", job_id, done["q8"].id], client=client) == 0
    assert json.loads(capsys.readouterr().out)["quantization"] == "q8_0"
    got = {k: Path(tmp_path / k) for k in done}
    for key, export in done.items():
        client.exports.download(job_id, export.id, got[key])

    # Every export's manifest: its files with sha256 and size, format, base model as named under the root, job id.
    for key, export in done.items():
        manifest = json.loads((got[key] / "manifest.json").read_text())
        assert manifest["job_id"] == job_id and manifest["export_id"] == export.id
        assert manifest["base_model"] == "tiny-causal-lm" and manifest["format"] == export.format
        listed = {f["name"]: f for f in manifest["files"]}
        assert set(listed) == {f.name for f in export.files} - {"manifest.json"}
        for name, f in listed.items():
            data = (got[key] / name).read_bytes()
            assert len(data) == f["bytes"] and hashlib.sha256(data).hexdigest() == f["sha256"], name
        assert str(tiny_causal_lm) not in (got[key] / "README.md").read_text()
    # Nothing staged is left behind.
    folder = store_root(env) / exports.export_dir("default", job_id, done["st"].id)
    assert not list(folder.parent.glob("*.staging"))

    # The job's own adapter, as the training wrote it: the reference.
    adapter = tmp_path / "job-adapter"
    client.jobs.download_all(job_id, adapter, prefix="adapter/")
    reference, ids = unmerged_logits(tiny_causal_lm, adapter, PROMPTS)
    scale = reference.abs().max()

    # 1. merged safetensors: fp16 on disk, reloads without peft, logits equal to the unmerged model within fp16.
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM, AutoTokenizer

    merged_dir = got["st"] / "model"
    with safe_open(str(merged_dir / "model.safetensors"), framework="pt") as fh:
        assert {fh.get_slice(k).get_dtype() for k in fh.keys()} == {"F16"}  # noqa: SIM118
        assert not any("lora" in k for k in fh.keys())  # noqa: SIM118
    merged = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        logits = torch.cat([merged(torch.tensor([i])).logits[0] for i in ids])
    assert float((logits - reference).abs().max() / scale) < 1e-2
    assert (
        done["st"].checks["reload"]["max_rel_logit_diff"] < 1e-2
        and done["st"].checks["merge"]["max_rel_logit_diff"] < 1e-4
    )
    assert AutoTokenizer.from_pretrained(merged_dir)(PROMPTS[0]).input_ids == ids[0]

    # 2. GGUF: re-read with GGUFReader: tensor names, shapes, types; architecture, hyperparameters and tokenizer.
    import gguf

    config = merged.config
    for key, big_type in (("f16", "F16"), ("q8", "Q8_0")):
        reader = gguf.GGUFReader(str(got[key] / "model.gguf"))
        field = {name: reader.get_field(name).contents() for name in reader.fields if not name.startswith("GGUF.")}
        assert field["general.architecture"] == "llama" and field["general.type"] == "model"
        assert field["llama.block_count"] == 2 and field["llama.embedding_length"] == 128
        assert field["llama.attention.head_count"] == 4 and field["llama.feed_forward_length"] == 256
        assert field["tokenizer.ggml.model"] == "gpt2" and field["tokenizer.ggml.pre"] == "gpt-2"
        tok = AutoTokenizer.from_pretrained(merged_dir)
        assert field["tokenizer.ggml.tokens"] == tok.convert_ids_to_tokens(list(range(config.vocab_size)))
        assert (
            field["tokenizer.ggml.bos_token_id"] == tok.bos_token_id
            and field["tokenizer.ggml.eos_token_id"] == tok.eos_token_id
        )
        assert len(field["tokenizer.ggml.merges"]) > 100 and "chat_template" in " ".join(field)
        tensors = {t.name: t for t in reader.tensors}
        blocks = {f"blk.{b}.{n}.weight" for b in range(2) for n in ("attn_q", "attn_k", "attn_v", "attn_output",
                  "ffn_gate", "ffn_up", "ffn_down", "attn_norm", "ffn_norm")}  # fmt: skip
        assert set(tensors) == blocks | {"token_embd.weight", "output_norm.weight"}  # tied: no output.weight
        assert tensors["blk.0.attn_q.weight"].tensor_type.name == big_type
        assert tensors["blk.1.ffn_down.weight"].tensor_type.name == big_type
        assert tensors["blk.0.attn_norm.weight"].tensor_type.name == "F32"
        assert [int(n) for n in tensors["blk.0.ffn_up.weight"].shape] == [128, 256]  # ne: (in, out)
        # transformers' own GGUF reader (dequantize, un-permute q/k) gives back the merged model's logits
        back = AutoModelForCausalLM.from_pretrained(got[key], gguf_file="model.gguf", dtype=torch.float32).eval()
        with torch.no_grad():
            gguf_logits = torch.cat([back(torch.tensor([i])).logits[0] for i in ids])
        assert float((gguf_logits - reference).abs().max() / scale) < (1e-2 if key == "f16" else 6e-2)
        assert done[key].checks["model.gguf"]["tensors"] == len(tensors)

    # the LoRA adapter as llama.cpp's GGUF adapter
    adapter_reader = gguf.GGUFReader(str(got["f16"] / "adapter.gguf"))
    assert adapter_reader.get_field("general.type").contents() == "adapter"
    assert adapter_reader.get_field("adapter.type").contents() == "lora"
    assert adapter_reader.get_field("adapter.lora.alpha").contents() == pytest.approx(8.0)
    names = {t.name: t for t in adapter_reader.tensors}
    assert len(names) == 2 * 4 * 2  # 2 layers x 4 projections x (lora_a, lora_b)
    assert [int(n) for n in names["blk.0.attn_k.weight.lora_a"].shape] == [128, 4]  # ne of (r, in)
    assert [int(n) for n in names["blk.0.attn_k.weight.lora_b"].shape] == [4, 128]  # ne of (out, r)

    # llama.cpp itself, where llama-cpp-python is installed: the same greedy tokens as the merged HF model
    llama_cpp = done["f16"].checks["llama_cpp"]
    if importlib.util.find_spec("llama_cpp") is None:
        assert "skipped" in llama_cpp
    else:
        assert llama_cpp["greedy_equal"] and llama_cpp["tokenized_same"], llama_cpp

    # 3. vLLM: adapter_config.json + adapter_model.safetensors, no modules_to_save, and the serve line
    assert sorted(p.name for p in (got["vllm"] / "adapter").iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
    ]
    config_json = json.loads((got["vllm"] / "adapter" / "adapter_config.json").read_text())
    assert not config_json.get("modules_to_save") and config_json["base_model_name_or_path"] == "tiny-causal-lm"
    readme = (got["vllm"] / "README.md").read_text()
    assert "vllm serve tiny-causal-lm --enable-lora --lora-modules colours=./adapter" in readme


def test_exports_that_cannot_be_made_are_4xx_naming_the_field(redis, env, http, model_root) -> None:  # type: ignore[no-untyped-def]
    from tests.jobs.helpers import create_job
    from tests.service.conftest import assert_error

    gpt2 = model_root / "tiny-gpt2-config-only"  # a causal LM of another architecture (its config is enough here)
    gpt2.mkdir(exist_ok=True)
    (gpt2 / "config.json").write_text(json.dumps({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}))
    file_id = upload_rows(env, qa_rows(4))

    def job(status: str = "succeeded", **kw) -> str:  # type: ignore[no-untyped-def]
        body = {"model": str(model_root / "tiny-causal-lm"), "training_file": file_id, **kw}
        return create_job(redis, JobCreate.model_validate(body), status=status)

    lora, running = job(method={"type": "lora"}), job("running", method={"type": "lora"})
    classifier = job(task="classification", method={"type": "lora"})
    prompt, full = job(method={"type": "prompt_tuning"}), job(method={"type": "full"})
    dora, other_arch = job(method={"type": "lora", "use_dora": True}), job(model=str(gpt2), method={"type": "lora"})
    post = lambda job_id, **body: http.post(f"/v1/jobs/{job_id}/exports", json=body)  # noqa: E731

    assert_error(post(running, format="gguf"), 409, "job_not_exportable", "job_id")
    assert_error(post("ftjob-" + "0" * 20, format="gguf"), 404, "job_not_found")
    assert_error(post(lora, format="onnx"), 422, "validation_error", "format")
    assert_error(post(lora, format="gguf", dtype="bf16"), 422, "validation_error")
    assert_error(post(lora, format="safetensors", quantization="q8_0"), 422, "validation_error")
    assert_error(post(lora, format="gguf", quantization="q4_k"), 422, "validation_error", "quantization")
    assert_error(post(lora, format="vllm", name="../x"), 422, "validation_error", "name")
    for job_id, fmt, words in (
        (classifier, "gguf", "classification"),
        (other_arch, "gguf", "gpt2"),
        (prompt, "gguf", "prompt_tuning"),
        (prompt, "safetensors", "prompt_tuning"),
        (full, "vllm", "full"),
        (dora, "vllm", "DoRA"),
    ):
        error = assert_error(post(job_id, format=fmt), 422, "export_not_supported", "format")
        assert words in error["message"], error
    assert_error(http.get(f"/v1/jobs/{lora}/exports/export-{'0' * 20}"), 404, "export_not_found", "export_id")
    assert http.get(f"/v1/jobs/{lora}/exports").json() == {"object": "list", "data": []}
    # An export whose RQ job is gone (its worker died and RQ dropped it) is failed on the next read, worker_lost.
    created = post(lora, format="safetensors")
    assert created.status_code == 202 and created.json()["dtype"] == "fp16", created.text
    export_id = created.json()["id"]
    assert http.get(f"/v1/jobs/{lora}/exports/{export_id}").json()["status"] == "queued"
    redis.delete(f"rq:job:{exports.rq_id(export_id)}")
    lost = http.get(f"/v1/jobs/{lora}/exports/{export_id}").json()
    assert lost["status"] == "failed" and lost["error"]["code"] == "worker_lost", lost


def test_a_failed_export_leaves_no_files(redis, env, worker, client, tiny_causal_lm) -> None:  # type: ignore[no-untyped-def]
    from tests.jobs.helpers import create_job

    body = {"model": str(tiny_causal_lm), "training_file": upload_rows(env, qa_rows(4)), "method": {"type": "lora"}}
    job_id = create_job(redis, JobCreate.model_validate(body), status="succeeded")  # succeeded, but no weights stored
    export = client.exports.create(job_id, format="safetensors")
    export = client.exports.wait(job_id, export.id, timeout=WAIT_S, poll_interval=0.5)
    assert export.status == "failed" and export.error is not None and export.files == [], export
    assert "manifest.json" in export.error.message or "No such file" in export.error.message, export.error
    assert [e.message.split(":")[0] for e in export.events] == ["queued", "running", "failed"]
    folder = store_root(env) / exports.export_dir("default", job_id, export.id)
    assert not folder.exists() and not folder.with_name(folder.name + ".staging").exists()
    response = client._http.get(f"/v1/jobs/{job_id}/exports/{export.id}/files/manifest.json")
    assert response.status_code == 404


def test_workers_take_only_well_formed_export_payloads() -> None:
    good = {"tenant": "default", "job_id": "ftjob-" + "0" * 20, "export_id": "export-" + "1" * 20}
    assert exports.payload_fields(good) == good
    for bad in ({**good, "extra": "x"}, {**good, "job_id": "../etc"}, {**good, "tenant": 1}, [good], None):
        assert exports.payload_fields(bad) is None, bad
