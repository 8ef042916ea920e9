"""QLoRA (method.quantize = "4bit"): the base loaded in 4-bit NF4 by bitsandbytes, LoRA trained on top.

This machine has no GPU; bitsandbytes (0.48+) also quantizes on the CPU, so the whole path runs here: the
4-bit load, peft's k-bit preparation, training, the adapter, and the merge into a full-precision model.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ftjobs.client.models import Hyperparameters, JobCreate, LoraMethod, Task
from ftjobs.core.keys import artifact_path
from ftjobs.jobs.data.inputs import load_model
from ftjobs.jobs.training.methods import apply_method, load_options
from tests.jobs.helpers import store_root, submit, upload_rows, wait_for
from tests.jobs.test_train import qa_rows

pytest.importorskip("bitsandbytes")

QLORA = LoraMethod(r=8, alpha=16, dropout=0.0, quantize="4bit")


def test_the_base_is_loaded_in_4bit_and_only_lora_trains(tiny_causal_lm: Path) -> None:
    options = load_options(QLORA)
    config = options["quantization_config"]
    assert config.load_in_4bit and config.bnb_4bit_quant_type == "nf4"
    assert config.bnb_4bit_compute_dtype == (torch.bfloat16 if torch.cuda.is_available() else torch.float32)

    model = load_model(tiny_causal_lm, Task.causal_lm, None, **options)
    quantized = [m for m in model.modules() if type(m).__name__ == "Linear4bit"]
    assert quantized and all(m.weight.dtype == torch.uint8 for m in quantized)  # packed 4-bit weights
    plain = load_model(tiny_causal_lm, Task.causal_lm, None)
    assert model.get_memory_footprint() < plain.get_memory_footprint()

    peft_model = apply_method(model, QLORA, Task.causal_lm)
    trainable = {name for name, p in peft_model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in name for name in trainable)
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    peft_model.train()
    peft_model(input_ids=ids, labels=ids).loss.backward()
    assert all(p.grad is not None for name, p in peft_model.named_parameters() if name in trainable)


def test_without_bitsandbytes_qlora_is_unsupported_naming_the_field() -> None:
    """A worker without the package (hidden from this subprocess) fails the job with a clear code and field."""
    script = (
        "import sys; sys.modules['bitsandbytes'] = None\n"
        "from ftjobs.client.models import LoraMethod\n"
        "from ftjobs.jobs.errors import UnsupportedMethod\n"
        "from ftjobs.jobs.training.methods import load_options\n"
        "try:\n"
        "    load_options(LoraMethod(quantize='4bit'))\n"
        "except UnsupportedMethod as e:\n"
        "    print(e.code, e.param, e.message)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.startswith("unsupported_method method.quantize "), out.stdout + out.stderr
    assert "bitsandbytes package is not installed" in out.stdout


def test_a_qlora_job_trains_and_merges_into_a_full_precision_model(  # type: ignore[no-untyped-def]
    redis, env, worker, tiny_causal_lm: Path
) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    request = JobCreate(
        model=str(tiny_causal_lm),
        training_file=upload_rows(env, qa_rows(40)),
        method=QLORA.model_copy(update={"merge": True}),
        hyperparameters=Hyperparameters(n_epochs=3, batch_size=4, learning_rate=1e-2, max_seq_length=64),
        eval_generation_limit=0,
    )
    job_id = submit(redis, env, request)
    job = wait_for(redis, job_id, worker=worker, timeout=240)
    assert job["status"] == "succeeded", (job, worker.output()[-3000:])
    results = job["results"]
    assert results["final"]["eval_loss"] < 0.8 * results["baseline"]["eval_loss"], results

    root = store_root(env)
    adapter = root / artifact_path("default", job_id, "adapter")
    merged_dir = root / artifact_path("default", job_id, "model")
    merged = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32)
    assert getattr(merged.config, "quantization_config", None) is None  # a plain full-precision model
    assert all(p.dtype == torch.float32 for p in merged.parameters())
    base = AutoModelForCausalLM.from_pretrained(tiny_causal_lm, dtype=torch.float32)
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    with torch.no_grad():
        base_logits = base(input_ids=ids).logits
        merged_logits = merged(input_ids=ids).logits
        with_adapter = PeftModel.from_pretrained(base, str(adapter))(input_ids=ids).logits
    assert torch.allclose(merged_logits, with_adapter, atol=1e-4)  # the adapter folded in exactly
    assert not torch.allclose(merged_logits, base_logits, atol=1e-3)  # and it learned something


def test_a_qlora_classification_job_keeps_its_head_in_full_precision(  # type: ignore[no-untyped-def]
    redis, env, monkeypatch, model_root: Path
) -> None:
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from tests.jobs.test_safeguards import run_job
    from tests.tiny_models import build_tiny_bert

    bert = build_tiny_bert(model_root / "tiny-bert")
    quantized = load_model(bert, Task.classification, ["a", "b"], **load_options(QLORA, Task.classification))
    kinds = {name: type(m).__name__ for name, m in quantized.named_modules()}
    assert kinds["classifier"] == kinds["bert.pooler.dense"] == "Linear" and "Linear4bit" in kinds.values()

    rows = [{"text": f"good fine great {i}", "label": "pos"} for i in range(12)]
    rows += [{"text": f"bad awful poor {i}", "label": "neg"} for i in range(12)]
    request = JobCreate(
        model=str(bert),
        task=Task.classification,
        training_file=upload_rows(env, rows),
        method=QLORA.model_copy(update={"merge": True}),
        hyperparameters=Hyperparameters(n_epochs=2, batch_size=8, learning_rate=1e-2, max_seq_length=16),
    )
    job = run_job(redis, env, monkeypatch, request)
    assert job["status"] == "succeeded", job["error"]

    root = store_root(env)
    merged = AutoModelForSequenceClassification.from_pretrained(root / artifact_path("default", job["id"], "model"))
    assert merged.config.id2label == {0: "neg", 1: "pos"}
    assert getattr(merged.config, "quantization_config", None) is None
    base = AutoModelForSequenceClassification.from_pretrained(bert, num_labels=2, dtype=torch.float32)
    adapter = PeftModel.from_pretrained(base, str(root / artifact_path("default", job["id"], "adapter")))
    tokenizer = AutoTokenizer.from_pretrained(bert)
    inputs = tokenizer(["good fine great", "bad awful poor"], return_tensors="pt", padding=True)
    with torch.no_grad():
        assert torch.allclose(merged.eval()(**inputs).logits, adapter.eval()(**inputs).logits, atol=1e-4)
