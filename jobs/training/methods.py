"""Fine-tuning methods: what to train, and how to save it so it loads back for inference.

    full            every weight                                   -> model/ (save_pretrained)
    lora            peft LoRA (use_dora: DoRA; quantize=4bit: QLoRA) -> adapter/ (PeftModel.from_pretrained)
    ia3             peft (IA)^3 rescaling vectors                  -> adapter/ (PeftModel.from_pretrained)
    prompt_tuning   peft virtual-token embeddings                  -> adapter/ (PeftModel.from_pretrained)
    prefix_tuning   peft per-layer key/value prefixes              -> adapter/ (PeftModel.from_pretrained)
    p_tuning        peft prompt encoder (MLP) -> virtual tokens    -> adapter/ (PeftModel.from_pretrained)
    adapter         bottleneck adapters (adapters.py)              -> adapter/ (adapters.load_bottleneck_adapter)

`merge: true` (lora, ia3) additionally writes model/: the adapter merged into the base (merge_and_unload).

The Trainer's own checkpoints (resume, early stopping's best) need two corrections, applied by JobTrainer:
`checkpoint_weights` (adapter: the trainable tensors only, not the frozen base) and `PROMPT_ENCODER_FILE`
(p_tuning: peft saves the prompt encoder's output, enough for inference but not for training on).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from peft import (
    IA3Config,
    LoraConfig,
    PeftConfig,
    PrefixTuningConfig,
    PromptEncoderConfig,
    PromptTuningConfig,
    TaskType,
    get_peft_model,
)
from safetensors.torch import load_file, save_file

from ftjobs.client.models import (
    AdapterMethod,
    FullMethod,
    IA3Method,
    LoraMethod,
    PrefixTuningMethod,
    PromptTuningMethod,
    PTuningMethod,
    Task,
)
from ftjobs.jobs.errors import InvalidMethod, UnsupportedMethod
from ftjobs.jobs.training import adapters

# A classification head is fresh (or re-purposed) and small, so LoRA trains it in full and saves it with the
# adapter: the classifier, plus what feeds it where the architecture has one (BERT's pooler, DistilBERT's
# pre_classifier; decoders call their head `score`). Names a model lacks are ignored.
CLASSIFICATION_HEAD = ["classifier", "score", "pooler", "pre_classifier"]
TASK_TYPES = {
    Task.causal_lm: TaskType.CAUSAL_LM,
    Task.dpo: TaskType.CAUSAL_LM,  # a decoder trained on preferences
    Task.classification: TaskType.SEQ_CLS,
    Task.seq2seq: TaskType.SEQ_2_SEQ_LM,
}
ADAPTER_CONFIG_ATTR = "ftjobs_bottleneck_config"  # set on a model by apply_method(adapter); read when saving
PROMPT_ENCODER_FILE = "prompt_encoder.safetensors"  # in a Trainer checkpoint, next to adapter_model.safetensors


def peft_config(method: Any, task: Task, model: Any = None) -> PeftConfig:
    """The peft config for a peft-backed method; target_modules=None lets peft pick the architecture's default."""
    head = CLASSIFICATION_HEAD if task == Task.classification else None
    task_type = TASK_TYPES[task]
    if isinstance(method, LoraMethod):
        return LoraConfig(
            r=method.r,
            lora_alpha=method.alpha,
            lora_dropout=method.dropout,
            target_modules=method.target_modules,
            use_dora=method.use_dora,
            task_type=task_type,
            modules_to_save=head,
        )
    if isinstance(method, IA3Method):
        return IA3Config(
            target_modules=method.target_modules,
            feedforward_modules=method.feedforward_modules,
            task_type=task_type,
            modules_to_save=head,
        )
    if isinstance(method, PromptTuningMethod):
        init: dict[str, Any] = {}
        if method.init_text:
            init = {
                "prompt_tuning_init": "TEXT",
                "prompt_tuning_init_text": method.init_text,
                "tokenizer_name_or_path": getattr(getattr(model, "config", None), "_name_or_path", None),
            }
        return PromptTuningConfig(
            num_virtual_tokens=method.num_virtual_tokens, task_type=task_type, modules_to_save=head, **init
        )
    if isinstance(method, PrefixTuningMethod):
        return PrefixTuningConfig(
            num_virtual_tokens=method.num_virtual_tokens, task_type=task_type, modules_to_save=head
        )
    if isinstance(method, PTuningMethod):
        return PromptEncoderConfig(
            num_virtual_tokens=method.num_virtual_tokens,
            encoder_hidden_size=method.encoder_hidden_size,
            task_type=task_type,
            modules_to_save=head,
        )
    raise TypeError(f"{type(method).__name__} is not a peft method")


def load_options(method: Any, task: Task = Task.causal_lm) -> dict[str, Any]:
    """Extra from_pretrained arguments the method needs (4-bit loading for QLoRA); fails where it cannot work.

    QLoRA runs where bitsandbytes can quantize: a CUDA GPU (bf16/fp16 compute), or the CPU with a bitsandbytes
    that has a CPU backend (0.48 and newer; fp32 compute: it saves memory, not time)."""
    if not (isinstance(method, LoraMethod) and method.quantize == "4bit"):
        return {}
    cuda = torch.cuda.is_available()
    problem = _bitsandbytes_problem("cuda" if cuda else "cpu")
    if problem:
        raise UnsupportedMethod(
            f"method.quantize='4bit' (QLoRA) needs bitsandbytes on this worker's device, and {problem}; "
            "use quantize=null (plain LoRA) or a worker with bitsandbytes (`pip install ftjobs[qlora]`)",
            param="method.quantize",
        )
    from transformers import BitsAndBytesConfig

    dtype = (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16) if cuda else torch.float32
    # A classification head is trained whole (modules_to_save): it and its submodules stay in full precision.
    # transformers reads each pattern as a regex from the start of a module's name (or as its suffix).
    skip = [rf"(?:.*\.)?{name}(?:\..*)?" for name in CLASSIFICATION_HEAD] if task == Task.classification else None
    return {
        "quantization_config": BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=dtype,
            bnb_4bit_use_double_quant=True,
            llm_int8_skip_modules=skip,  # (bitsandbytes' name for it in 4-bit loading too)
        )
    }


def _bitsandbytes_problem(device: str) -> str | None:
    """Why bitsandbytes cannot quantize to NF4 on `device` here (None: it can): a probe on a small tensor."""
    try:
        from bitsandbytes.functional import quantize_4bit
    except ImportError:
        return "the bitsandbytes package is not installed"
    try:
        quantize_4bit(torch.randn(64, 64, device=device), quant_type="nf4")
    except Exception as e:  # no backend for this device, a CUDA/ROCm mismatch ...
        return f"it cannot quantize on the {device} here ({type(e).__name__}: {_short(e)})"
    return None


def apply_method(model: Any, method: Any, task: Task) -> Any:
    """The model to train: a PeftModel for peft methods, the model with adapters inserted, or the model itself."""
    if isinstance(method, FullMethod):
        return model
    if isinstance(method, AdapterMethod):
        try:
            config = adapters.add_bottleneck_adapters(
                model,
                positions=list(method.positions),
                reduction_factor=method.reduction_factor,
                bottleneck_size=method.bottleneck_size,
                non_linearity=method.non_linearity,
                dropout=method.dropout,
                train_modules=CLASSIFICATION_HEAD if task == Task.classification else (),
            )
        except ValueError as e:
            raise InvalidMethod(f"adapter: {e}", param="method.positions") from None
        setattr(model, ADAPTER_CONFIG_ATTR, config)
        return model
    if isinstance(method, LoraMethod) and method.quantize == "4bit":
        from peft import prepare_model_for_kbit_training

        # bitsandbytes (0.50) repacks 4-bit weights for fast CPU inference at the first no-grad forward (our probe,
        # the baseline evaluation) and never back: later training steps then get no gradients. Keep them as trained.
        for module in model.modules():
            if hasattr(module, "support_avx512bf16_for_cpu"):
                module.support_avx512bf16_for_cpu = False
        model = prepare_model_for_kbit_training(model)
    param = "method.target_modules" if isinstance(method, LoraMethod | IA3Method) else "method.type"
    try:
        peft_model = get_peft_model(model, peft_config(method, task, model))
    except (ValueError, TypeError, KeyError, NotImplementedError) as e:  # e.g. target modules the model lacks
        raise InvalidMethod(f"{method.type}: {_short(e)}", param=param) from None
    _probe(peft_model, method, task)
    return peft_model


def _probe(model: Any, method: Any, task: Task) -> None:
    """One tiny forward pass, so a method the architecture cannot run (e.g. a cache format peft's prefix tuning
    does not handle) fails now as invalid_method instead of mid-training as an internal error."""
    device = next(model.parameters()).device
    ids = torch.tensor([[1, 2, 3]], device=device)
    inputs: dict[str, Any] = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if task != Task.classification:
        inputs["labels"] = ids
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(**inputs)
    except Exception as e:
        raise InvalidMethod(
            f"{method.type} does not work with this model for {task.value}: {type(e).__name__}: {_short(e)}",
            param="method.type",
        ) from None
    finally:
        model.train(was_training)


BASE_FOLDER_ATTR = "ftjobs_base_folder"  # the folder peft's configs named before `name_base`
PEFT_PATH_FIELDS = ("base_model_name_or_path", "tokenizer_name_or_path")  # peft config fields holding that folder


def name_base(model: Any, shown: str) -> None:
    """peft's configs name the base model as the tenant may see it (`shown`), not the server's folder: trackers log
    them. `base_folder` puts the folder back while peft saves or merges, since its checks read it."""
    configs = list((getattr(model, "peft_config", None) or {}).values())
    folder = configs[0].base_model_name_or_path if configs else None
    if not folder or not Path(folder).is_absolute():
        return
    setattr(model, BASE_FOLDER_ATTR, folder)
    _swap_base(configs, folder, shown)


@contextlib.contextmanager
def base_folder(model: Any) -> Iterator[None]:
    """While saving: the peft configs name the folder again (jobs/outputs/artifacts.py renames it in the files)."""
    folder = getattr(model, BASE_FOLDER_ATTR, None)
    configs = list((getattr(model, "peft_config", None) or {}).values())
    if folder is None or not configs:
        yield
        return
    shown = configs[0].base_model_name_or_path
    _swap_base(configs, shown, folder)
    try:
        yield
    finally:
        _swap_base(configs, folder, shown)


def _swap_base(configs: list[Any], old: str, new: str) -> None:
    for config in configs:
        for field in PEFT_PATH_FIELDS:
            if getattr(config, field, None) == old:
                setattr(config, field, new)


def save_weights(model: Any, method: Any, out: Path) -> list[str]:
    """Write the trained weights under `out` (adapter/ and/or model/); returns the folders written."""
    with base_folder(model):
        return _save_weights(model, method, out)


def _unique_modules_to_save(model: Any) -> None:
    """peft appends its own head names to a SEQ_CLS config's modules_to_save, repeating ours in adapter_config."""
    for config in getattr(model, "peft_config", {}).values():
        if getattr(config, "modules_to_save", None):
            config.modules_to_save = list(dict.fromkeys(config.modules_to_save))


def _save_weights(model: Any, method: Any, out: Path) -> list[str]:
    if isinstance(method, FullMethod):
        model.save_pretrained(out / "model")
        return ["model"]
    if isinstance(method, AdapterMethod):
        adapters.save_bottleneck_adapter(model, out / "adapter", getattr(model, ADAPTER_CONFIG_ATTR))
        return ["adapter"]
    _unique_modules_to_save(model)
    model.save_pretrained(out / "adapter")
    if not getattr(method, "merge", False):
        return ["adapter"]
    if getattr(method, "quantize", None) == "4bit":
        merged = _merge_into_full_precision(model, out / "adapter")
    else:  # merge_and_unload folds the adapter into the base weights in place: the adapter is already saved above.
        merged = model.merge_and_unload()
    merged.save_pretrained(out / "model")
    return ["adapter", "model"]


def _merge_into_full_precision(model: Any, adapter: Path) -> Any:
    """QLoRA's merged model: the base loaded again unquantized (fp32) with the saved adapter folded in; merging
    into the 4-bit weights would bake their rounding into a model that is meant to be full precision."""
    from peft import PeftModel

    trained = model.get_base_model()
    config = copy.deepcopy(trained.config)  # the job's labels, dropout ... without the 4-bit loading
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    base_path = model.peft_config[model.active_adapter].base_model_name_or_path
    base = type(trained).from_pretrained(base_path, config=config, dtype=torch.float32)
    return PeftModel.from_pretrained(base, str(adapter)).merge_and_unload()


def checkpoint_weights(model: Any) -> dict[str, torch.Tensor] | None:
    """What a Trainer checkpoint must hold of `model` when not its whole state_dict (None): with bottleneck adapters,
    the trainable tensors; the frozen base is the job's base model, loaded again by the attempt that resumes."""
    return adapters.trainable_state_dict(model) if hasattr(model, ADAPTER_CONFIG_ATTR) else None


def frozen_in_checkpoint(model: Any, missing: list[str]) -> list[str]:
    """Of the keys a loaded checkpoint lacked, those that `checkpoint_weights` left out on purpose (frozen base)."""
    if not hasattr(model, ADAPTER_CONFIG_ATTR):
        return []
    trained = {name for name, p in model.named_parameters() if p.requires_grad}
    return [key for key in missing if key not in trained]


def _lossy_prompt_encoder(model: Any) -> torch.nn.Module | None:
    """The prompt encoder whose peft save is lossy: one that trains more than its embedding (p_tuning's MLP).

    peft saves a prompt-learning adapter as the encoder's output (`prompt_embeddings`); loading puts that output into
    the embedding. For prompt tuning (and prefix tuning without projection) the output is the embedding: exact."""
    config = getattr(model, "active_peft_config", None)
    if config is None or not config.is_prompt_learning:
        return None
    encoder = model.prompt_encoder[model.active_adapter]
    trained = [name for name, p in encoder.named_parameters() if p.requires_grad]
    return encoder if any(name != "embedding.weight" for name in trained) else None


def save_prompt_encoder(model: Any, folder: Path) -> None:
    """Write the whole prompt encoder into a Trainer checkpoint folder, where peft's save is lossy (p_tuning)."""
    encoder = _lossy_prompt_encoder(model)
    if encoder is not None:
        state = {k: v.detach().cpu().contiguous() for k, v in encoder.state_dict().items()}
        save_file(state, str(Path(folder) / PROMPT_ENCODER_FILE), metadata={"format": "pt"})


def load_prompt_encoder(model: Any, folder: Path | str) -> None:
    """After the Trainer loaded a checkpoint's adapter: put the whole prompt encoder back (p_tuning)."""
    encoder = _lossy_prompt_encoder(model)
    if encoder is None:
        return
    path = Path(folder) / PROMPT_ENCODER_FILE
    if not path.is_file():  # without it the encoder's MLP would restart from its initialisation
        raise FileNotFoundError(f"{path.parent.name} has no {PROMPT_ENCODER_FILE} to restore the prompt encoder from")
    encoder.load_state_dict(load_file(str(path)), strict=True)


def parameter_counts(model: Any) -> tuple[int, int]:
    """(trainable, total) parameters."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


def _short(e: BaseException, limit: int = 400) -> str:
    text = " ".join(str(e).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
