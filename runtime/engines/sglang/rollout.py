"""On-policy generation on SGLang: one engine per rollout actor, token ids in and out, the student's weights
loaded in place after every optimizer step.

Sampling follows `SamplingConfig`; each prompt is sent `samples_per_prompt` times (see
`args.rollout_input_ids`), with its images if it has any (`args.rollout_image_data`). `SamplingConfig.seed`
cannot be honoured per call: SGLang 0.5.23 reads a request's `sampling_seed` only with deterministic inference
on (slower kernels), so the engine is seeded once, at construction, with `random_seed`. The SGLang teacher
answers prompts the same way (`SGLangSampler`) when it writes a step's responses (sequence-level KD).

Weights arrive one of two ways (the sequence of calls is in `kubedistill.runtime.engines.weight_sync`):
- `begin_weight_update()`, then `update_weights(bucket)` per bucket, then `end_weight_update()`: the tensors
  themselves, when they can reach this actor (colocated GPUs, same node); works asleep too, by waking the
  weights alone, once for the whole sync;
- `init_weight_sync_group(group)` once, then `receive_weights(metas)` per update: the trainer broadcasts over
  NCCL to engines on other GPUs or nodes (gloo between CPU processes).

sglang-router is not used: it balances HTTP servers, while these engines are in-process objects inside Ray
actors and the rollout group spreads prompts over them itself.
"""

from collections.abc import Iterable
from operator import attrgetter

import torch

from kubedistill.api.spec import Attention, Precision, RolloutSpec
from kubedistill.runtime.data.images import ImageInputs
from kubedistill.runtime.engines.layout import EnginePlacement
from kubedistill.runtime.engines.sglang.args import (
    engine_environment,
    output_ids,
    rollout_engine_args,
    rollout_image_data,
    rollout_input_ids,
    rollout_sampling_params,
)
from kubedistill.runtime.engines.sglang.engine import ALL_MEMORY, SGLangEngine
from kubedistill.runtime.engines.weight_sync import (
    DEFAULT_BUCKET_BYTES,
    TensorMeta,
    WeightSyncGroup,
    buckets,
)
from kubedistill.runtime.rollout.backend import SamplingConfig


class SGLangSampler:
    """Answers to prompts from an SGLang engine (`_sglang`, set by the subclass): the rollout engines', and
    the teacher's when it writes a step's responses (sequence-level KD), so both sample alike."""

    _sglang: SGLangEngine

    def generate(
        self,
        prompts: list[list[int]],
        sampling: SamplingConfig,
        images: list[ImageInputs | None] | None = None,
    ) -> list[list[int]]:
        """`images`: a vision-language model's image inputs, one per prompt (None: a prompt without images),
        for the image tokens already expanded in it; None or empty when no prompt has images."""
        if not prompts:
            return []
        if images and len(images) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(images)} image inputs")
        outputs = self._sglang.generate(
            input_ids=rollout_input_ids(prompts, sampling.samples_per_prompt),
            sampling_params=rollout_sampling_params(sampling),
            return_hidden_states=False,
            image_data=rollout_image_data(images, sampling.samples_per_prompt),
        )
        return output_ids(outputs)


class SGLangRollout(SGLangSampler):
    def __init__(
        self,
        rollout: RolloutSpec,
        model_path: str,
        placement: EnginePlacement,
        *,
        colocate: bool,
        precision: Precision,
        seed: int,
        bucket_bytes: int = DEFAULT_BUCKET_BYTES,
        attention: Attention = Attention.SDPA,
    ) -> None:
        server_args = rollout_engine_args(
            rollout,
            model_path,
            placement,
            colocate=colocate,
            precision=precision,
            seed=seed,
            attention=attention,
        )
        self._bucket_bytes = bucket_bytes
        self._device = placement.device
        self._sync_group: str | None = None
        self._sglang = SGLangEngine(server_args, engine_environment(placement, colocate=colocate))

    def begin_weight_update(self) -> None:
        self._sglang.begin_weight_update()

    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        self._sglang.load_tensors(list(named_tensors))

    def end_weight_update(self) -> None:
        self._sglang.end_weight_update()

    def init_weight_sync_group(self, group: WeightSyncGroup) -> None:
        """Join the trainer's broadcast group (NCCL, or gloo on the CPU); returns once the trainer and every
        other engine have joined."""
        self._sglang.join_weight_sync_group(group, self._device)
        self._sync_group = group.group_name

    def receive_weights(self, metas: list[TensorMeta]) -> None:
        """Receive the tensors the trainer broadcasts, in `metas` order, and load them."""
        if self._sync_group is None:
            raise RuntimeError("receive_weights needs init_weight_sync_group first")
        # Buckets bound the memory of received tensors waiting to be loaded.
        with self._sglang.weight_update():
            for bucket in buckets(metas, attrgetter("nbytes"), self._bucket_bytes):
                self._sglang.receive_tensors(bucket, self._sync_group)

    def sleep(self) -> None:
        self._sglang.release(ALL_MEMORY)

    def wake(self) -> None:
        self._sglang.resume(ALL_MEMORY)

    def close(self) -> None:
        self._sglang.shutdown()
