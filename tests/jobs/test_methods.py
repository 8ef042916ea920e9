"""Every method trains a few steps, saves, reloads and gives the trained model's outputs; bottleneck adapter units."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from peft import PeftModel
from pydantic import ValidationError
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    Trainer,
    TrainingArguments,
)

from ftjobs.client.models import JobCreate, Task
from ftjobs.jobs.errors import InvalidMethod, UnsupportedMethod
from ftjobs.jobs.outputs.artifacts import write_artifacts
from ftjobs.jobs.training import adapters
from ftjobs.jobs.training.methods import apply_method, load_options, parameter_counts
from ftjobs.jobs.training.trainer import PadCollator
from tests.jobs.helpers import submit, upload_rows, wait_for

CAUSAL_METHODS: dict[str, dict[str, Any]] = {
    "full": {"type": "full"},
    "lora": {"type": "lora", "r": 4, "alpha": 8},
    "dora": {"type": "lora", "r": 4, "alpha": 8, "use_dora": True},
    "ia3": {"type": "ia3"},
    "prompt_tuning": {"type": "prompt_tuning", "num_virtual_tokens": 4, "init_text": "what is the colour"},
    "prefix_tuning": {"type": "prefix_tuning", "num_virtual_tokens": 4},
    "p_tuning": {"type": "p_tuning", "num_virtual_tokens": 4, "encoder_hidden_size": 32},
    "adapter": {"type": "adapter", "bottleneck_size": 8, "non_linearity": "gelu"},
}
CLASSIFICATION_METHODS = {k: CAUSAL_METHODS[k] for k in ("lora", "ia3", "prompt_tuning", "adapter")}
CAUSAL_TEXTS = ["what is the colour of the sky ? the sky is blue", "say hello . hello there , how are you ?"] * 4
CLASSIFICATION_ROWS = [("a wonderful , lovely film", 1), ("a dull and boring mess", 0)] * 4


def _method(spec: dict[str, Any], model: str = "m") -> Any:
    """A validated method (the wire model), as the worker gets it."""
    return JobCreate.model_validate({"model": model, "training_file": "file-" + "0" * 20, "method": spec}).method


def _train(model: Any, tokenizer: Any, examples: list[dict[str, Any]], out: Path, lr: float, steps: int = 3) -> None:
    args = TrainingArguments(
        output_dir=str(out / "trainer"),
        per_device_train_batch_size=4,
        max_steps=steps,
        learning_rate=lr,
        report_to="none",
        save_strategy="no",
        logging_strategy="no",
        disable_tqdm=True,
        remove_unused_columns=False,
        label_names=["labels"],
        use_cpu=True,
    )
    Trainer(model=model, args=args, train_dataset=examples, data_collator=PadCollator(tokenizer.pad_token_id)).train()


def _weights(model: Any) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def _reload(kind: str, out: Path, base: Path, loader: Any) -> Any:
    if kind == "full":
        return loader(out / "model")
    if kind == "adapter":
        return adapters.load_bottleneck_adapter(loader(base), out / "adapter")
    return PeftModel.from_pretrained(loader(base), out / "adapter").eval()


@pytest.mark.parametrize("kind", list(CAUSAL_METHODS))
def test_causal_method_trains_saves_reloads(kind: str, tiny_causal_lm: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    method = _method(CAUSAL_METHODS[kind])
    tokenizer = AutoTokenizer.from_pretrained(tiny_causal_lm)
    model = apply_method(AutoModelForCausalLM.from_pretrained(tiny_causal_lm), method, Task.causal_lm)
    trainable, total = parameter_counts(model)
    assert 0 < trainable <= total and (trainable == total) == (kind == "full")
    before = _weights(model)
    examples = [{"input_ids": ids, "labels": ids} for ids in tokenizer(CAUSAL_TEXTS)["input_ids"]]
    examples = [{**e, "attention_mask": [1] * len(e["input_ids"])} for e in examples]
    _train(model, tokenizer, examples, tmp_path, lr=1e-2)
    after = _weights(model)
    assert any(not torch.equal(before[n], after[n]) for n in before), "training changed nothing"

    write_artifacts(tmp_path / "out", model=model, tokenizer=tokenizer, method=method, task=Task.causal_lm,
                    labels=None, metrics={}, job={})
    reloaded = _reload(kind if kind in ("full", "adapter") else "peft", tmp_path / "out", tiny_causal_lm,
                       AutoModelForCausalLM.from_pretrained)
    model.eval()
    prompt = tokenizer(["what is the colour of"], return_tensors="pt")
    with torch.no_grad():
        want = model(**prompt).logits
        got = reloaded(**prompt).logits
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
        gen = dict(max_new_tokens=5, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        assert torch.equal(reloaded.generate(**prompt, **gen), model.generate(**prompt, **gen))


@pytest.mark.parametrize("kind", list(CLASSIFICATION_METHODS))
def test_classification_method_trains_saves_reloads(kind: str, minilm: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    method = _method(CLASSIFICATION_METHODS[kind])
    tokenizer = AutoTokenizer.from_pretrained(minilm)

    def load(path: Path) -> Any:
        return AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)

    model = apply_method(load(minilm), method, Task.classification)
    trained_names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert any("classifier" in n for n in trained_names), "the classification head must train"
    assert not any("encoder.layer.0.attention.self.query.weight" in n and "lora" not in n for n in trained_names)
    enc = tokenizer([t for t, _ in CLASSIFICATION_ROWS])["input_ids"]
    examples = [{"input_ids": ids, "attention_mask": [1] * len(ids), "labels": y}
                for ids, (_, y) in zip(enc, CLASSIFICATION_ROWS, strict=True)]
    _train(model, tokenizer, examples, tmp_path, lr=5e-3, steps=2)

    write_artifacts(tmp_path / "out", model=model, tokenizer=tokenizer, method=method, task=Task.classification,
                    labels=["neg", "pos"], metrics={}, job={})
    saved = json.loads((tmp_path / "out/adapter/adapter_config.json").read_text())
    heads = saved.get("modules_to_save") or []
    assert len(heads) == len(set(heads)), heads
    reloaded = _reload("adapter" if kind == "adapter" else "peft", tmp_path / "out", minilm, load)
    fresh = load(minilm).eval()
    model.eval()
    batch = tokenizer(["a lovely film", "boring"], return_tensors="pt", padding=True)
    with torch.no_grad():
        want, got, base = model(**batch).logits, reloaded(**batch).logits, fresh(**batch).logits
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(want, base, atol=1e-4), "the trained model should differ from a fresh one"


@pytest.mark.parametrize("kind", ["lora", "ia3"])
def test_merge_writes_full_model_equal_to_peft_model(kind: str, tiny_causal_lm: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    method = _method({**CAUSAL_METHODS[kind], "merge": True})
    tokenizer = AutoTokenizer.from_pretrained(tiny_causal_lm)
    model = apply_method(AutoModelForCausalLM.from_pretrained(tiny_causal_lm), method, Task.causal_lm)
    examples = [{"input_ids": ids, "labels": ids} for ids in tokenizer(CAUSAL_TEXTS)["input_ids"]]
    _train(model, tokenizer, examples, tmp_path, lr=1e-2)
    model.eval()
    prompt = tokenizer(["what is the colour of"], return_tensors="pt")
    with torch.no_grad():
        want = model(**prompt).logits
    write_artifacts(tmp_path / "out", model=model, tokenizer=tokenizer, method=method, task=Task.causal_lm,
                    labels=None, metrics={}, job={})
    assert (tmp_path / "out/adapter/adapter_model.safetensors").is_file()
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "out/model").eval()
    assert not any("lora" in n or "ia3" in n for n, _ in merged.named_parameters())
    base = AutoModelForCausalLM.from_pretrained(tiny_causal_lm).eval()
    with torch.no_grad():
        got, untrained = merged(**prompt).logits, base(**prompt).logits
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(untrained, want, atol=1e-4)


@pytest.mark.parametrize("spec", [{"type": "adapter", "merge": True}, {"type": "prompt_tuning", "merge": True},
                                  {"type": "full", "merge": True}])
def test_merge_is_rejected_for_methods_that_cannot_merge(spec: dict[str, Any]) -> None:
    with pytest.raises(ValidationError, match="can be merged") as e:
        _method(spec)
    assert e.value.errors()[0]["loc"] == ("method", spec["type"], "merge")  # the API names it `method.merge`


def test_methods_the_model_cannot_run_fail_as_invalid_method(minilm: Path) -> None:
    def bert() -> Any:
        return AutoModelForSequenceClassification.from_pretrained(minilm, num_labels=2)

    # BERT has no key/value cache for peft to prepend prefixes to: caught by the probe forward, not mid-training
    with pytest.raises(InvalidMethod, match="prefix_tuning does not work") as e:
        apply_method(bert(), _method({"type": "prefix_tuning"}), Task.classification)
    assert e.value.code == "invalid_method" and e.value.param == "method.type"
    with pytest.raises(InvalidMethod) as e:
        apply_method(bert(), _method({"type": "ia3", "target_modules": ["no_such_module"]}), Task.classification)
    assert e.value.param == "method.target_modules"
    with pytest.raises(InvalidMethod) as e:  # an architecture with no output projection the adapter knows
        apply_method(bert().classifier, _method({"type": "adapter"}), Task.classification)
    assert e.value.param == "method.positions"


def test_qlora_needs_bitsandbytes() -> None:
    """With bitsandbytes QLoRA loads in 4-bit (tests/jobs/test_qlora.py trains it); without, a clear error."""
    method = _method({"type": "lora", "quantize": "4bit"})
    assert load_options(_method({"type": "lora"})) == {}
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        with pytest.raises(UnsupportedMethod, match="method.quantize") as e:
            load_options(method)
        assert e.value.code == "unsupported_method" and e.value.param == "method.quantize"
        return
    assert load_options(method)["quantization_config"].load_in_4bit


# ----------------------------------------------------------------------------- jobs/training/adapters.py


def _tiny(path: Path) -> Any:
    return AutoModelForCausalLM.from_pretrained(path).eval()


def test_zero_init_adapter_leaves_outputs_unchanged(tiny_causal_lm: Path) -> None:
    base, wrapped = _tiny(tiny_causal_lm), _tiny(tiny_causal_lm)
    config = adapters.add_bottleneck_adapters(wrapped, positions=["attention", "ffn"], reduction_factor=4)
    assert len(config["targets"]) == 4  # 2 layers x (o_proj, down_proj)
    assert {t.rsplit(".", 1)[1] for t in config["targets"]} == {"o_proj", "down_proj"}
    ids = torch.tensor([[1, 5, 9, 12, 7]])
    with torch.no_grad():
        torch.testing.assert_close(wrapped(input_ids=ids).logits, base(input_ids=ids).logits)
        # a non-zero up-projection does change them: the adapter is in the path
        for module in wrapped.modules():
            if isinstance(module, adapters.BottleneckAdapter):
                module.up.weight.fill_(0.1)
        assert not torch.allclose(wrapped(input_ids=ids).logits, base(input_ids=ids).logits)


def test_only_adapters_and_head_are_trainable(tiny_causal_lm: Path, minilm: Path) -> None:
    model = _tiny(tiny_causal_lm)
    adapters.add_bottleneck_adapters(model, positions=["ffn"], bottleneck_size=8)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".adapter." in n and "down_proj" in n for n in trainable)
    # 2 layers x (down 256->... no: hidden 128 -> 8 -> 128): weights + biases
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 2 * (128 * 8 + 8 + 8 * 128 + 128)

    bert = AutoModelForSequenceClassification.from_pretrained(minilm, num_labels=3)
    config = adapters.add_bottleneck_adapters(
        bert, positions=["attention", "ffn"], reduction_factor=16, train_modules=["classifier", "pooler"]
    )
    assert len(config["targets"]) == 12  # 6 layers x (attention.output.dense, output.dense)
    assert sum(t.endswith("attention.output.dense") for t in config["targets"]) == 6
    trainable = {n for n, p in bert.named_parameters() if p.requires_grad}
    assert {"classifier.weight", "bert.pooler.dense.weight"} <= trainable
    assert all(".adapter." in n or n.startswith(("classifier", "bert.pooler")) for n in trainable)


def test_bottleneck_adapter_save_load_roundtrip(tiny_causal_lm: Path, tmp_path: Path) -> None:
    torch.manual_seed(1)
    model = _tiny(tiny_causal_lm)
    config = adapters.add_bottleneck_adapters(model, positions=["attention"], reduction_factor=8, non_linearity="tanh")
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(0, 0.2)
    adapters.save_bottleneck_adapter(model, tmp_path / "adapter", config)
    saved = json.loads((tmp_path / "adapter/adapter_config.json").read_text())
    assert saved["type"] == "bottleneck" and saved["bottleneck_sizes"]["model.layers.0.self_attn.o_proj"] == 16
    reloaded = adapters.load_bottleneck_adapter(_tiny(tiny_causal_lm), tmp_path / "adapter")
    ids = torch.tensor([[1, 5, 9, 12]])
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids).logits, model(input_ids=ids).logits)
        assert not torch.allclose(_tiny(tiny_causal_lm)(input_ids=ids).logits, model(input_ids=ids).logits)


# ----------------------------------------------------------------------------- through the worker


def test_adapter_job_end_to_end(redis, env, worker, tiny_causal_lm: Path) -> None:  # type: ignore[no-untyped-def]
    rows = [
        {"messages": [{"role": "user", "content": "what is the colour of snow ?"},
                      {"role": "assistant", "content": "snow is white"}]}
    ] * 16
    request = JobCreate.model_validate(
        {
            "model": str(tiny_causal_lm),
            "training_file": upload_rows(env, rows),
            "method": {"type": "adapter", "reduction_factor": 8},
            "hyperparameters": {"max_steps": 4, "batch_size": 4, "learning_rate": 1e-2},
        }
    )
    job_id = submit(redis, env, request)
    job = wait_for(redis, job_id, worker=worker)
    assert job["status"] == "succeeded", (job, worker.output()[-3000:])
    assert job["resolved"]["trainable_parameters"] == 2 * 2 * (128 * 16 + 16 + 16 * 128 + 128)
    names = {a["name"] for a in job["artifacts"]}
    assert {"adapter/adapter_model.safetensors", "adapter/adapter_config.json", "adapter/tokenizer.json"} <= names
    assert not any(n.startswith("model/") for n in names)
