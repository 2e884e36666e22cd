"""Vision-language models: which part is the vision tower, which parameters train when it stays fixed
(`spec.student.freezeVision`, the default: the optimizer takes the parameters that require gradients), and
which module turns tokens and images into hidden states.

Qwen2-VL, Qwen2.5-VL and Qwen3-VL (transformers' `...ForConditionalGeneration`) hold the vision tower at
`model.visual`, its patch merger (the projection into the language model's hidden size) included; LLaVA-style
models call it `vision_tower`, Idefics-style ones `vision_model`. The language model and the output head are
everything else.
"""

from typing import Any

import torch

VISION_TOWER_NAMES = ("visual", "vision_tower", "vision_model")


def vision_tower(model: torch.nn.Module) -> torch.nn.Module | None:
    """The model's vision tower (on the model or on its inner `model`); None for a text model."""
    for owner in (model, getattr(model, "model", None)):
        for name in VISION_TOWER_NAMES:
            tower = getattr(owner, name, None)
            if isinstance(tower, torch.nn.Module):
                return tower
    return None


def language_config(config: Any) -> Any:
    """The language model's part of a model's config (a vision-language config's `text_config`, where its
    hidden size is); a text model's config itself."""
    return getattr(config, "text_config", None) or config


def backbone(model: torch.nn.Module) -> torch.nn.Module:
    """The module whose output is the final, post-norm hidden states, the input of `lm_head`.

    A causal LM's decoder takes tokens only; a vision-language model's inner `model` takes the images too,
    runs the vision tower and places its output at the image tokens (its `get_decoder()` is the bare language
    model, which would see the image tokens as text). A peft (LoRA) model is looked through to its base."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # pyright: ignore[reportCallIssue]
    if vision_tower(base) is not None:
        inner = getattr(base, "model", None)
        assert isinstance(inner, torch.nn.Module), f"{type(base).__name__} has no inner model"
        return inner
    decoder = base.get_decoder() if hasattr(base, "get_decoder") else getattr(base, "model", None)  # pyright: ignore[reportCallIssue]
    assert isinstance(decoder, torch.nn.Module), f"{type(base).__name__} has no decoder"
    return decoder


def freeze_vision_tower(model: torch.nn.Module) -> int:
    """Stop gradients into the vision tower, so the backward pass skips it; how many weights it froze."""
    tower = vision_tower(model)
    if tower is None:
        return 0
    frozen = 0
    for parameter in tower.parameters():
        parameter.requires_grad_(False)
        frozen += parameter.numel()
    return frozen
