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


# -- tiny vision-language models (Qwen2-VL architecture) ---------------------------------------------------

VISION_TOKENS = ("<|vision_start|>", "<|image_pad|>", "<|vision_end|>")
# Qwen2-VL's markup for a message whose content is a list of parts: an image part renders as its placeholder
# between the vision markers (the processor expands the placeholder to the image's tokens), a text part as
# its text. A string content renders as CHAT_TEMPLATE renders it, so text chats read the same.
VLM_CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['content'] is string %}{{- message['content'] }}"
    "{%- else %}{%- for part in message['content'] %}"
    "{%- if part['type'] == 'image' %}{{- '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{%- elif part['type'] == 'text' %}{{- part['text'] }}{%- endif %}"
    "{%- endfor %}{%- endif %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
VLM_TEACHER_SHAPE = TinyShape(
    hidden_size=48, intermediate_size=96, num_hidden_layers=2, tie_word_embeddings=False
)
VLM_STUDENT_SHAPE = TinyShape(
    hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1
)
"""The picture chats' teacher and student (`demo.data.picture_records`): a minute's training on two cores."""
# The smallest image the processor takes is 56x56 pixels (patch 14, merged 2x2): 4x4 patches, 4 tokens. The
# upper bound keeps test images to a few dozen tokens.
TINY_MIN_PIXELS = 56 * 56
TINY_MAX_PIXELS = 112 * 112


@dataclass(frozen=True)
class TinyVisionShape:
    depth: int = 1
    """Vision transformer blocks: one or two is enough to exercise the tower."""
    embed_dim: int = 32
    num_heads: int = 2
    mlp_ratio: int = 2


def build_vlm_tokenizer(texts: Iterable[str], vocab_size: int = 512):
    """`build_tokenizer`'s tokenizer with Qwen2-VL's vision tokens and an image-aware chat template."""
    tokenizer = build_tokenizer(texts, vocab_size)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", *VISION_TOKENS]})
    tokenizer.chat_template = VLM_CHAT_TEMPLATE
    return tokenizer


def build_image_processor(max_pixels: int = TINY_MAX_PIXELS):
    """Qwen2-VL's image processor (patch 14, 2x2 merge) bounded to small images (at most `max_pixels`)."""
    from transformers import Qwen2VLImageProcessor

    return Qwen2VLImageProcessor(size={"shortest_edge": TINY_MIN_PIXELS, "longest_edge": max_pixels})


def build_vlm(
    tokenizer, shape: TinyShape = STUDENT_SHAPE, vision: TinyVisionShape = TinyVisionShape(), seed: int = 0
):
    """A randomly initialised Qwen2-VL sized for `build_vlm_tokenizer`'s tokenizer, its vision tower
    `vision.depth` blocks deep and shaped for `build_image_processor`'s patches."""
    import torch
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    images = build_image_processor()
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in VISION_TOKENS}
    # mRoPE splits each head's rotary half into temporal, height and width sections. Qwen2-VL's heads are
    # hidden_size / heads wide whatever `head_dim` says.
    half = shape.hidden_size // shape.num_attention_heads // 2
    sections = [half - 2 * (half // 3), half // 3, half // 3]
    config = Qwen2VLConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": shape.hidden_size,
            "intermediate_size": shape.intermediate_size,
            "num_hidden_layers": shape.num_hidden_layers,
            "num_attention_heads": shape.num_attention_heads,
            "num_key_value_heads": shape.num_key_value_heads,
            "max_position_embeddings": 1024,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": sections},
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
            "bos_token_id": None,
            "attention_dropout": 0.0,
        },
        vision_config={
            "depth": vision.depth,
            "embed_dim": vision.embed_dim,
            "hidden_size": shape.hidden_size,
            "num_heads": vision.num_heads,
            "mlp_ratio": vision.mlp_ratio,
            "patch_size": images.patch_size,
            "spatial_merge_size": images.merge_size,
            "temporal_patch_size": images.temporal_patch_size,
            # Qwen2-VL's published configs name the pixel channels `in_chans` (transformers reads
            # `in_channels`, default 3); SGLang 0.5.23 reads `in_chans` (`srt/models/qwen2_vl.py:302`).
            "in_chans": 3,
        },
        image_token_id=ids["<|image_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=shape.tie_word_embeddings,
    )
    torch.manual_seed(seed)
    return Qwen2VLForConditionalGeneration(config)


def save_tiny_vlm(
    directory: Path,
    tokenizer,
    shape: TinyShape = STUDENT_SHAPE,
    vision: TinyVisionShape = TinyVisionShape(),
    seed: int = 0,
) -> Path:
    """Write a tiny Qwen2-VL, its tokenizer and its image processor to `directory` (Hugging Face layout), as a
    Qwen2-VL checkpoint holds them (`AutoTokenizer` and `AutoImageProcessor` read them back)."""
    directory.mkdir(parents=True, exist_ok=True)
    build_vlm(tokenizer, shape, vision, seed).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    build_image_processor().save_pretrained(directory)
    return directory
