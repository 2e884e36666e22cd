"""Tiny models and tokenizers built from configs, for the demo, the tests and the benchmarks.

Nothing is downloaded: the tokenizer is trained with the `tokenizers` library on the given texts and the
models are Qwen3-architecture transformers with random weights, written to a directory in the Hugging Face
layout, so every consumer loads them with the real `from_pretrained` code path.
"""

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

# Qwen-style chat markup. `{% generation %}` is deliberately absent (real Qwen templates lack it too): the
# data pipeline finds assistant tokens without help from the template.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")


@dataclass(frozen=True)
class TinyShape:
    hidden_size: int = 64
    intermediate_size: int = 128
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    head_dim: int = 16
    tie_word_embeddings: bool = True


TEACHER_SHAPE = TinyShape(
    hidden_size=96, intermediate_size=256, num_hidden_layers=3, tie_word_embeddings=False
)
STUDENT_SHAPE = TinyShape()


def build_tokenizer(texts: Iterable[str], vocab_size: int = 512):
    """A byte-level BPE tokenizer trained on `texts`, with Qwen's special tokens and a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(texts, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>"],
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_model(tokenizer, shape: TinyShape = STUDENT_SHAPE, seed: int = 0):
    """A randomly initialised Qwen3 causal LM sized for `tokenizer` (its vocab follows `len(tokenizer)`)."""
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    config = Qwen3Config(
        vocab_size=len(tokenizer),
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_hidden_layers,
        num_attention_heads=shape.num_attention_heads,
        num_key_value_heads=shape.num_key_value_heads,
        head_dim=shape.head_dim,
        max_position_embeddings=1024,
        tie_word_embeddings=shape.tie_word_embeddings,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
        attention_dropout=0.0,
    )
    torch.manual_seed(seed)
    return Qwen3ForCausalLM(config)


def save_tiny(directory: Path, tokenizer, shape: TinyShape = STUDENT_SHAPE, seed: int = 0) -> Path:
    """Write a tiny model and its tokenizer to `directory` (Hugging Face layout, safetensors)."""
    directory.mkdir(parents=True, exist_ok=True)
    build_model(tokenizer, shape, seed).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
