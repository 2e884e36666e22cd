"""LoRA students (peft): adapters on the student's linear layers, and the merged weights other engines and
exports need.

peft names a wrapped layer's weights `...q_proj.base_layer.weight`, `...q_proj.lora_A.default.weight` and
`...q_proj.lora_B.default.weight` under the prefix `base_model.model.`; an engine that knows only the base
architecture wants `...q_proj.weight = base + (alpha / rank) * B @ A`.
"""

from collections.abc import Iterable, Iterator

import torch
from torch import nn

from kubedistill.api.spec import LoraSpec
from kubedistill.runtime.models.vision import vision_tower

PEFT_PREFIX = "base_model.model."
ADAPTER = "default"
_BASE = ".base_layer."
_A = f".lora_A.{ADAPTER}.weight"
_B = f".lora_B.{ADAPTER}.weight"


def apply_lora(model: nn.Module, spec: LoraSpec) -> nn.Module:
    from peft import LoraConfig, get_peft_model

    targets: str | list[str] = (
        "all-linear" if spec.target_modules == ["all-linear"] else list(spec.target_modules)
    )
    config = LoraConfig(
        r=spec.rank,
        lora_alpha=spec.alpha,
        lora_dropout=spec.dropout,
        target_modules=targets,
        # Adapters go on the language model: a vision-language model's tower sees pixels, not the text
        # the distillation teaches (and is frozen by default).
        exclude_modules=vision_module_names(model) or None,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def vision_module_names(model: nn.Module) -> list[str]:
    """The full names of the vision tower's modules (none for a text model)."""
    tower = vision_tower(model)
    if tower is None:
        return []
    inside = {id(module) for module in tower.modules()}
    return [name for name, module in model.named_modules() if name and id(module) in inside]


def scaling(spec: LoraSpec) -> float:
    return spec.alpha / spec.rank


def merged_weights(
    named: Iterable[tuple[str, torch.Tensor]], scale: float
) -> Iterator[tuple[str, torch.Tensor]]:
    """peft-named weights -> base-architecture names, each adapted weight merged. It streams: peft lists a
    layer's base weight, then A, then B, so at most one layer's pieces wait."""
    waiting: dict[str, dict[str, torch.Tensor]] = {}
    for name, tensor in named:
        name = name.removeprefix(PEFT_PREFIX)
        if name.endswith(_A) or name.endswith(_B):
            layer = name.removesuffix(_A).removesuffix(_B)
            waiting.setdefault(layer, {})["A" if name.endswith(_A) else "B"] = tensor
        elif _BASE in name:
            layer, _, leaf = name.partition(_BASE)
            waiting.setdefault(layer, {})[leaf] = tensor
        else:
            yield name, tensor
            continue
        pieces = waiting[layer]
        if {"weight", "A", "B"} <= pieces.keys():
            delta = (pieces.pop("B").float() @ pieces.pop("A").float()) * scale
            base = pieces.pop("weight")
            yield f"{layer}.weight", (base.float() + delta).to(base.dtype)
            for leaf, rest in pieces.items():
                yield f"{layer}.{leaf}", rest
            del waiting[layer]
    if waiting:
        raise ValueError(f"incomplete LoRA layers: {sorted(waiting)}")
