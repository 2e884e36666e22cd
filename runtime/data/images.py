"""Images in chat records: reading them, and turning them into the inputs and tokens of a vision-language
model of the Qwen-VL families (Qwen2-VL, Qwen2.5-VL, Qwen3-VL and its MoE, Qwen3.5).

A user message's content parts may carry images, in the OpenAI chat format or Hugging Face's:
`{"type": "image_url", "image_url": {"url": ...}}` (or `"image_url": "..."`) and `{"type": "image",
"image": ...}`. The reference is a local path (relative to the data file's folder), a `file://` path, or a
`data:` URL (base64). Remote URLs are refused: a training run must not depend on a server answering.

The images go through the model's own image processor (`AutoImageProcessor` on the model's directory, its
`preprocessor_config.json`), and each image's placeholder in the rendered chat becomes as many image tokens
as the processor makes patches for it (`image_grid_thw` over the 2x2 merge), the rule the Qwen-VL
processors apply (`replace_image_token`). The full `AutoProcessor` is not used: for these models it also
builds a video processor, which transformers only builds with torchvision installed, and nothing here reads
video. Teacher and student share one tokenisation, so they see the same image tokens and pixels.
"""

import base64
import binascii
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from kubedistill.api.job import SpecError
from kubedistill.runtime.data.errors import RecordProblem
from kubedistill.runtime.data.records import json_type

if TYPE_CHECKING:
    import torch
    from PIL.Image import Image

IMAGE_TOKEN = "<|image_pad|>"
"""The placeholder Qwen-VL chat templates render for an image, and the token each of its patches becomes."""
IMAGE_PART_TYPES = ("image", "image_url")
_REMOTE = ("http://", "https://")


class ImageInTextJob(RecordProblem):
    """A record has an image, and the model has no image processor: the job, not the record, is wrong."""


@dataclass(frozen=True, eq=False)
class ImageInputs:
    """A sample's images as a Qwen-VL model's forward takes them, in the order their tokens appear."""

    pixel_values: np.ndarray
    """[patches, channels * temporal patch * patch * patch], every image's patches one after another."""
    image_grid_thw: tuple[tuple[int, int, int], ...]
    """Per image: its patch grid (time, height, width)."""
    image_token_id: int

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ImageInputs):
            return NotImplemented
        return (
            self.image_grid_thw == other.image_grid_thw
            and self.image_token_id == other.image_token_id
            and np.array_equal(self.pixel_values, other.pixel_values)
        )

    def __hash__(self) -> int:
        return hash((self.image_grid_thw, self.image_token_id))


def batch_image_inputs(
    images: "Sequence[ImageInputs | None]", input_ids: "torch.Tensor"
) -> "dict[str, torch.Tensor]":
    """The image keyword arguments of a Qwen-VL forward over the padded rows `input_ids` [B, L], row i having
    `images[i]` (None: no images); empty when no row has any, so a text batch runs as text.

    The model takes every row's patches concatenated in row order, one grid per image, and marks image tokens
    in `mm_token_type_ids` to build its 3-D (mRoPE) positions; padding is never an image token, because the
    pad token is not the image token (a processor's tokenizer keeps them apart)."""
    # Imported here: preparing data (also in worker processes, which start by importing this module) needs
    # no torch, whose import takes seconds.
    import torch

    present = [inputs for inputs in images if inputs is not None]
    if not present:
        return {}
    token_ids = {inputs.image_token_id for inputs in present}
    if len(token_ids) != 1:
        raise ValueError(f"one batch, several image tokens: {sorted(token_ids)}")
    (token_id,) = token_ids
    has_images = torch.tensor([inputs is not None for inputs in images], dtype=torch.bool)[:, None]
    return {
        "pixel_values": torch.from_numpy(np.concatenate([inputs.pixel_values for inputs in present])),
        "image_grid_thw": torch.tensor(
            [grid for inputs in present for grid in inputs.image_grid_thw], dtype=torch.long
        ),
        "mm_token_type_ids": ((input_ids == token_id) & has_images).long(),
    }


@dataclass(frozen=True)
class ImageProcessing:
    """A vision-language model's image processor and its tokenizer's image token."""

    image_processor: Any
    image_token_id: int
    model: str
    """The model directory (or hub id) it was read from, for messages."""

    def process(self, images: "list[Image]") -> tuple[ImageInputs, list[int]]:
        """The images' inputs, and how many image tokens each becomes."""
        out = self.image_processor(images=images, return_tensors="np")
        grid = tuple((int(t), int(h), int(w)) for t, h, w in out["image_grid_thw"])
        merge = int(self.image_processor.merge_size) ** 2
        counts = [t * h * w // merge for t, h, w in grid]
        pixels = np.ascontiguousarray(out["pixel_values"], dtype=np.float32)
        return ImageInputs(pixels, grid, self.image_token_id), counts


def load_image_processing(
    path: str, tokenizer: Any, field: str = "spec.student.model"
) -> ImageProcessing | None:
    """The image processing of the model at `path` (`tokenizer`: its tokenizer); None for a text-only model
    (a directory without `preprocessor_config.json`). `SpecError` naming `field` when the processor or the
    tokenizer cannot make Qwen-VL image tokens."""
    from transformers import AutoImageProcessor

    directory = Path(path)
    if directory.is_dir() and not (directory / "preprocessor_config.json").is_file():
        return None
    try:
        processor = AutoImageProcessor.from_pretrained(path)
    except OSError:
        # A hub id without an image processor: a text-only model.
        return None
    if not hasattr(processor, "merge_size"):
        raise SpecError(
            field,
            f"{path} has the image processor {type(processor).__name__}; images are read for Qwen2-VL, "
            "Qwen2.5-VL and Qwen3-VL models, whose processors merge patches (merge_size)",
        )
    token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    if token_id is None or token_id == tokenizer.unk_token_id:
        raise SpecError(field, f"the tokenizer of {path} has no {IMAGE_TOKEN} token for image patches")
    return ImageProcessing(processor, token_id, path)


def image_reference(part: dict[str, Any], where: str) -> str:
    """The path or URL an image content part names; `RecordProblem` naming the part when it names none."""
    value = part.get(part["type"])
    if part["type"] == "image_url" and isinstance(value, dict):
        value = value.get("url")
    if not isinstance(value, str) or not value:
        shape = '{"url": ...}' if part["type"] == "image_url" else "a path or URL"
        raise RecordProblem(f"{where} {part['type']} must be {shape}, got {json_type(value)}")
    return value


def load_image(reference: str, folder: Path, where: str) -> "Image":
    """The image `reference` names (a path relative to `folder`, `file://`, or a `data:` URL), as RGB.

    `RecordProblem` naming the path when it is missing, unreadable or not an image."""
    from PIL import Image, UnidentifiedImageError

    if reference.startswith(_REMOTE):
        raise RecordProblem(
            f"{where}: the image {reference!r} is a remote URL; images are read from local files or "
            "data: URLs, so that a run does not depend on a server"
        )
    if reference.startswith("data:"):
        shown, raw = f"{reference[:32]}...", _data_url_bytes(reference, where)
    else:
        path = folder / reference.removeprefix("file://")
        shown = f"{reference!r}" + (f" ({path})" if str(path) != reference else "")
        try:
            raw = path.read_bytes()
        except OSError as error:
            raise RecordProblem(
                f"{where}: cannot read the image {shown}: {error.strerror or error}"
            ) from error
    try:
        with Image.open(io.BytesIO(raw)) as image:
            return image.convert("RGB")
    except UnidentifiedImageError as error:
        raise RecordProblem(f"{where}: the image {shown} cannot be read as an image") from error
    except (OSError, ValueError) as error:
        raise RecordProblem(f"{where}: the image {shown} cannot be read as an image ({error})") from error


def _data_url_bytes(url: str, where: str) -> bytes:
    header, comma, payload = url.partition(",")
    if not comma or not header.endswith(";base64"):
        raise RecordProblem(f"{where}: a data: URL image must be base64 (data:image/png;base64,...)")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as error:
        raise RecordProblem(f"{where}: the data: URL image is not valid base64 ({error})") from error


def expand_placeholders(text: str, counts: list[int]) -> str:
    """`text` with its i-th image placeholder repeated `counts[i]` times; a text with fewer placeholders
    (a prefix of the chat) expands those it has."""
    pieces = text.split(IMAGE_TOKEN)
    if len(pieces) - 1 > len(counts):
        raise RecordProblem(
            f"the chat renders {len(pieces) - 1} image placeholders ({IMAGE_TOKEN}) for {len(counts)} "
            "images; a message's text must not hold the placeholder itself"
        )
    out = [pieces[0]]
    for count, piece in zip(counts, pieces[1:], strict=False):
        out.append(IMAGE_TOKEN * count + piece)
    return "".join(out)
