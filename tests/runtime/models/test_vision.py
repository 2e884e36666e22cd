import pytest
import torch

from kubedistill.runtime.demo.tiny import build_model, build_tokenizer, build_vlm, build_vlm_tokenizer
from kubedistill.runtime.models.vision import freeze_vision_tower, vision_tower

TEXTS = ["What is this? A red square."]


@pytest.fixture
def vlm() -> torch.nn.Module:
    return build_vlm(build_vlm_tokenizer(TEXTS), seed=0)


def trained(model: torch.nn.Module) -> list[str]:
    """What the student's optimizer takes: the parameters that require gradients."""
    return [name for name, parameter in model.named_parameters() if parameter.requires_grad]


def test_with_the_vision_frozen_only_the_language_model_trains(vlm: torch.nn.Module) -> None:
    freeze_vision_tower(vlm)
    names = trained(vlm)
    every = [name for name, _ in vlm.named_parameters()]
    assert names == [name for name in every if not name.startswith("model.visual.")]
    assert "model.language_model.embed_tokens.weight" in names
    assert not any("merger" in name for name in names)
    assert len(names) < len(every)


def test_unfrozen_every_parameter_trains(vlm: torch.nn.Module) -> None:
    assert trained(vlm) == [name for name, _ in vlm.named_parameters()]


def test_a_text_model_has_no_vision_tower_and_trains_whole() -> None:
    model = build_model(build_tokenizer(TEXTS, vocab_size=300))
    assert vision_tower(model) is None
    assert freeze_vision_tower(model) == 0
    assert len(trained(model)) == len(list(model.parameters()))


def test_a_frozen_tower_gets_no_gradient_and_the_language_model_does() -> None:
    tokenizer = build_vlm_tokenizer(TEXTS)
    model = build_vlm(tokenizer, seed=0)
    frozen = freeze_vision_tower(model)
    assert frozen == sum(parameter.numel() for parameter in model.model.visual.parameters())
    # 1x4x4 patches (a 56x56 image): 16 patch rows, 4 image tokens after the 2x2 merge.
    image = tokenizer.convert_tokens_to_ids("<|image_pad|>")
    ids = torch.tensor([[tokenizer.convert_tokens_to_ids("<|vision_start|>"), *[image] * 4, 5, 6]])
    patch = model.config.vision_config
    pixels = torch.randn(16, 3 * patch.temporal_patch_size * patch.patch_size**2)
    logits = model(
        input_ids=ids,
        pixel_values=pixels,
        image_grid_thw=torch.tensor([[1, 4, 4]]),
        mm_token_type_ids=(ids == image).long(),
    ).logits
    logits.sum().backward()
    assert all(parameter.grad is None for parameter in model.model.visual.parameters())
    assert model.model.language_model.layers[0].mlp.up_proj.weight.grad is not None
