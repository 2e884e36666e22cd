"""Loading models, tokenizers and a teacher's output head from a Hugging Face directory (or hub id)."""

import json
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from transformers import PreTrainedModel
from safetensors import safe_open

from kubedistill.api.spec import Precision

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


def load_causal_lm(path: str, dtype: torch.dtype = torch.float32) -> "PreTrainedModel":
    """The model at `path` with its output head: a causal LM, or a vision-language model (its config has a
    `vision_config`), which transformers loads through `AutoModelForImageTextToText`, not the causal-LM
    class."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText

    config = AutoConfig.from_pretrained(path)
    auto = (
        AutoModelForImageTextToText
        if getattr(config, "vision_config", None) is not None
        else AutoModelForCausalLM
    )
    return auto.from_pretrained(path, config=config, dtype=dtype)


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
