"""Tiny models built in code for the test suite: no hub, no download, seconds on a CPU."""

from __future__ import annotations

import tempfile
from pathlib import Path

# Small built-in corpus: enough words for the tests' rows to become whole tokens; bytes cover the rest.
CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "what is the colour of the sky ? the sky is blue",
    "what is the colour of grass ? grass is green",
    "what is the colour of snow ? snow is white",
    "what is the colour of the sun ? the sun is yellow",
    "say hello . hello there , how are you ?",
    "count to three : one two three four five six seven eight nine ten",
    "user assistant system question answer",
    "say red green blue cat dog sun moon tree fish bird",
    "a b c d e f g h i j k l m n o p q r s t u v w x y z",
    "0 1 2 3 4 5 6 7 8 9",
]
SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>"]

# Same shape as jobs/data/examples.py's default template; {% generation %} marks the assistant's tokens.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' }}"
    "{% if message['role'] == 'assistant' %}"
    "{% generation %}{{ message['content'] + eos_token }}{% endgeneration %}"
    "{% else %}{{ message['content'] + eos_token }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)


def build_tiny_tokenizer(vocab_size: int = 512):  # type: ignore[no-untyped-def]
    """A byte-level BPE trained on CORPUS (any text encodes, no <unk>), wrapped for transformers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 4, trainer=trainer)
    # Prepend <s> like Llama does, so `tokenizer(text)` starts every sequence with BOS.
    bos_id = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos_id)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>"
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_tiny_causal_lm(path: Path) -> Path:
    """A random-init 2-layer Llama (hidden 128, ~0.2M parameters) + its tokenizer, saved; idempotent."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if (path / "config.json").is_file():
        return path

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = build_tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
        # Wider than Llama's 0.02: with tied embeddings, logits can then grow large enough for a frozen
        # random base + LoRA on q/v to learn a copy task within a few dozen steps (tests need a falling loss).
        initializer_range=0.1,
    )
    torch.manual_seed(0)  # the same weights on every run
    model = LlamaForCausalLM(config)
    # Build beside the target and rename: a half-written folder is never mistaken for a model.
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}-", dir=path.parent))
    tokenizer.save_pretrained(tmp)
    model.save_pretrained(tmp)
    tmp.rename(path)
    return path


def build_tiny_t5(path: Path) -> Path:
    """A random-init 2+2-layer T5 (d_model 64, ~0.1M parameters) + the tiny tokenizer, saved; idempotent."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if (path / "config.json").is_file():
        return path

    import torch
    from transformers import T5Config, T5ForConditionalGeneration

    tokenizer = build_tiny_tokenizer()
    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=64,
        d_kv=16,
        d_ff=128,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        dropout_rate=0.0,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,  # T5 starts decoding from the pad token
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    model = T5ForConditionalGeneration(config)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}-", dir=path.parent))
    tokenizer.save_pretrained(tmp)
    model.save_pretrained(tmp)
    tmp.rename(path)
    return path


def build_tiny_bert(path: Path) -> Path:
    """A random 2-layer BERT classifier base (hidden 32) + the tiny BPE tokenizer, saved."""
    if (path / "config.json").is_file():
        return path
    import torch
    from transformers import BertConfig, BertModel

    tokenizer = build_tiny_tokenizer()
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    BertModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
