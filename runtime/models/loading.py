"""Loading models, tokenizers and a teacher's output head from a Hugging Face directory (or hub id)."""

import json
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from transformers import PreTrainedModel
from safetensors import safe_open

from kubedistill.api.job import SpecError
from kubedistill.api.spec import Attention, Precision

HEAD_NAMES = ("lm_head.weight",)
TIED_HEAD_NAMES = (
    "model.embed_tokens.weight",
    "embed_tokens.weight",
    "transformer.wte.weight",
    # Vision-language models (Qwen2-VL and later in transformers 5): the language model sits in `model`.
    "model.language_model.embed_tokens.weight",
)


def compute_dtype(precision: Precision) -> torch.dtype:
    return torch.bfloat16 if precision == Precision.BF16 else torch.float32


def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def load_causal_lm(
    path: str,
    dtype: torch.dtype = torch.float32,
    attention: Attention = Attention.SDPA,
    liger_kernel: bool = False,
) -> "PreTrainedModel":
    """The model at `path` with its output head: a causal LM, or a vision-language model (its config has a
    `vision_config`), which transformers loads through `AutoModelForImageTextToText`, not the causal-LM
    class. `attention` is transformers' `attn_implementation` (spec.student.attention); `liger_kernel` puts
    Liger's kernels in its decoder (spec.student.ligerKernel)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText

    config = AutoConfig.from_pretrained(path)
    auto = (
        AutoModelForImageTextToText
        if getattr(config, "vision_config", None) is not None
        else AutoModelForCausalLM
    )
    model = auto.from_pretrained(path, config=config, dtype=dtype, attn_implementation=str(attention))
    if liger_kernel:
        apply_liger_kernels(model)
    return model


def apply_liger_kernels(model: "PreTrainedModel") -> None:
    """Liger's RMSNorm, RoPE and SwiGLU kernels in `model`'s decoder, in place (liger-kernel 0.8.2,
    `src/liger_kernel/transformers/monkey_patch.py:3623-3649`, `_apply_liger_kernel_to_instance`).

    Its fused linear cross-entropy, on by default (e.g. `apply_liger_kernel_to_qwen3`, same file:1665-1668),
    replaces the model's forward with one that computes the loss on the labels; the student's loss here is the
    distillation algorithm's, computed from the backbone's hidden states (`DistillationModule.forward`), so
    both loss kernels stay off. Liger skips a model type it has no kernels for with an info log only: that
    is refused here, so a job never trains without the kernels it asked for."""
    from liger_kernel.transformers.monkey_patch import (  # type: ignore[import-not-found]
        MODEL_TYPE_TO_APPLY_LIGER_FN,
        _apply_liger_kernel_to_instance,
    )

    model_type = model.config.model_type
    if model_type not in MODEL_TYPE_TO_APPLY_LIGER_FN:
        raise SpecError(
            "spec.student.ligerKernel", f"Liger has no kernels for {model_type} models; remove the field"
        )
    _apply_liger_kernel_to_instance(model, fused_linear_cross_entropy=False, cross_entropy=False)


def copy_named_tensors(model: torch.nn.Module, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
    """Load new values into `model`'s parameters in place, by Hugging Face parameter name."""
    parameters = dict(model.named_parameters())
    with torch.no_grad():
        for name, tensor in named_tensors:
            if name not in parameters:
                raise KeyError(f"no parameter {name!r} in {type(model).__name__}")
            parameters[name].copy_(tensor.to(parameters[name].device, parameters[name].dtype))


def load_lm_head_weight(path: str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The teacher's output projection [vocab, hidden], read alone from its safetensors files.

    Every student rank holds it to turn the teacher's hidden states into the teacher's exact logits; loading
    the whole teacher for it would cost the teacher's full size on every rank. With tied embeddings the head
    is the input embedding matrix.
    """
    directory = _local_directory(path)
    config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    # A vision-language config may keep the flag in its text model's part only.
    tied = bool(
        config.get("tie_word_embeddings", config.get("text_config", {}).get("tie_word_embeddings", False))
    )
    names = (TIED_HEAD_NAMES + HEAD_NAMES) if tied else (HEAD_NAMES + TIED_HEAD_NAMES)
    files = _safetensors_files(directory)
    for name in names:
        for file in files:
            with safe_open(file, framework="pt") as handle:
                if name in handle.keys():  # noqa: SIM118 - safe_open handles are not containers
                    return handle.get_tensor(name).to(dtype)
    raise FileNotFoundError(f"{directory}: no output head ({', '.join(names)}) in {[f.name for f in files]}")


def _safetensors_files(directory: Path) -> list[Path]:
    index = directory / "model.safetensors.index.json"
    if index.exists():
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        return [directory / name for name in sorted(set(weight_map.values()))]
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{directory}: no safetensors weights")
    return files


def _local_directory(path: str) -> Path:
    directory = Path(path)
    if directory.is_dir():
        return directory
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(path, allow_patterns=["*.json", "*.safetensors"]))
