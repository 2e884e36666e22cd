"""On-policy generation on transformers (CPU or one GPU per engine). SGLang serves the same protocol."""

from functools import cached_property

import torch
from transformers import PreTrainedTokenizerBase

from kubedistill.api.spec import Attention
from kubedistill.runtime.data.images import ImageInputs, batch_image_inputs
from kubedistill.runtime.engines.transformers.model import TransformersEngine
from kubedistill.runtime.models.loading import load_tokenizer
from kubedistill.runtime.rollout.backend import SamplingConfig


class TransformersRollout(TransformersEngine):
    def __init__(
        self,
        model_path: str,
        dtype: torch.dtype,
        device: torch.device,
        attention: Attention = Attention.SDPA,
    ) -> None:
        super().__init__(model_path, dtype, device, attention)
        self._model_path = model_path
        config = self._model.config
        # A vision-language model's placeholders stand for pixels: a response is text, so they are never
        # sampled (an image token in a response would have no image behind it).
        self._suppressed = [
            int(token)
            for token in (getattr(config, "image_token_id", None), getattr(config, "video_token_id", None))
            if token is not None
        ] or None

    @cached_property
    def _tokenizer(self) -> PreTrainedTokenizerBase:
        # Read when the engine first samples: a teacher that never does needs no tokenizer beside its model.
        return load_tokenizer(self._model_path)

    @property
    def _eos(self) -> int:
        return self._tokenizer.eos_token_id

    @property
    def _pad(self) -> int:
        pad = self._tokenizer.pad_token_id
        return pad if pad is not None else self._eos

    @torch.inference_mode()
    def generate(
        self,
        prompts: list[list[int]],
        sampling: SamplingConfig,
        images: list[ImageInputs | None] | None = None,
    ) -> list[list[int]]:
        self._check_awake()
        generator_seed = torch.initial_seed()
        torch.manual_seed(sampling.seed)
        each = images if images is not None else [None] * len(prompts)
        try:
            return [
                response
                for prompt, inputs in zip(prompts, each, strict=True)
                for response in self._sample(prompt, sampling, inputs)
            ]
        finally:
            torch.manual_seed(generator_seed)

    def _sample(
        self, prompt: list[int], sampling: SamplingConfig, images: ImageInputs | None
    ) -> list[list[int]]:
        # One prompt at a time: no padding, so a prompt's samples do not depend on what it is batched with.
        input_ids = torch.tensor([prompt], dtype=torch.long, device=self._device)
        pictures = batch_image_inputs([images], input_ids)
        greedy = sampling.temperature == 0
        outputs = self._model.generate(
            input_ids=input_ids,
            **{name: value.to(self._device) for name, value in pictures.items()},
            attention_mask=torch.ones_like(input_ids),
            do_sample=not greedy,
            temperature=None if greedy else sampling.temperature,
            top_p=None if greedy else sampling.top_p,
            top_k=None if greedy else 0,
            max_new_tokens=sampling.max_new_tokens,
            # Greedy samples are all alike: one is decoded and repeated. transformers 5.19 (SGLang 0.5.23's
            # pin, so the runtime image's) refuses num_return_sequences > 1 without sampling.
            num_return_sequences=1 if greedy else sampling.samples_per_prompt,
            eos_token_id=self._eos,
            pad_token_id=self._pad,
            suppress_tokens=self._suppressed,
        )
        responses = [_until_eos(row[len(prompt) :].tolist(), self._eos) for row in outputs]
        return responses * sampling.samples_per_prompt if greedy else responses


def _until_eos(tokens: list[int], eos: int) -> list[int]:
    """The response up to and including its end-of-sequence token (generate pads finished rows with it)."""
    return tokens[: tokens.index(eos) + 1] if eos in tokens else tokens
