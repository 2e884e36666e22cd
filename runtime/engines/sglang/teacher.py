"""The teacher on SGLang: one engine per replica (tensor, pipeline, expert and data parallel inside it),
scoring token ids with a whole-sequence prefill and returning the final post-norm hidden states.

What the hidden states are and how they come back is established from SGLang's source in
`kubedistill.runtime.engines.sglang.args`; architectures whose states are not the input of `lm_head` are
refused before an engine starts. A vision-language teacher's images go with their sequences in the HF
processor's format (`args.image_data_for`); the image tokens are already in the sequences, so the hidden
states keep our positions. A replica spanning nodes has one backend per node; only node rank 0's serves
batches, sleeps and wakes (SGLang forwards those to every node's schedulers); the others only host ranks.

For sequence-level KD (spec.rollout.sequenceKd) the teacher also answers prompts, sampling exactly as the
SGLang rollout engines do (`SGLangSampler`: token ids in and out, the rollout's sampling settings, stopping at
the model's end-of-sequence token), its engine seeded with the training seed as theirs are.

sglang-router is not used: it balances HTTP servers, while these engines are in-process objects inside Ray
actors, and the teacher group already balances micro-batches over replicas by token count.
"""

from collections.abc import Iterable

import torch

from kubedistill.api.spec import Attention, Precision, TeacherSpec
from kubedistill.runtime.data.images import ImageInputs
from kubedistill.runtime.engines.layout import EnginePlacement, single_node_placement
from kubedistill.runtime.engines.sglang.args import (
    ENGINE_DTYPES,
    engine_environment,
    gather_hidden_states,
    hidden_state_sampling_params,
    image_data_for,
    refuse_images_for,
    refuse_unusable_hidden_states,
    teacher_engine_args,
    teacher_weight_update_refusal,
)
from kubedistill.runtime.engines.sglang.engine import ALL_MEMORY, SGLangEngine
from kubedistill.runtime.engines.sglang.hidden_states import remove_prefill_rows, request_ids
from kubedistill.runtime.engines.sglang.rollout import SGLangSampler
from kubedistill.runtime.rollout.backend import SamplingConfig
from kubedistill.runtime.teacher.backend import TeacherBatch

__all__ = ["EnginePlacement", "SGLangTeacher", "single_node_placement"]


class SGLangTeacher(SGLangSampler):
    def __init__(
        self,
        teacher: TeacherSpec,
        model_path: str,
        placement: EnginePlacement,
        *,
        colocate: bool,
        precision: Precision,
        attention: Attention = Attention.SDPA,
        seed: int | None = None,
    ) -> None:
        """`seed`: the engine's sampling seed (`args.teacher_engine_args`)."""
        from transformers import PretrainedConfig

        config, _ = PretrainedConfig.get_config_dict(model_path)
        self._architectures: list[str] = config.get("architectures") or []
        self._model_path = model_path
        refuse_unusable_hidden_states(self._architectures, model_path)
        server_args = teacher_engine_args(
            teacher,
            model_path,
            placement,
            colocate=colocate,
            precision=precision,
            attention=attention,
            seed=seed,
        )
        self._hidden_size = int(config.get("text_config", config)["hidden_size"])
        self._dtype: torch.dtype = getattr(torch, ENGINE_DTYPES[precision])
        self._placement = placement
        self._weight_update_refusal = teacher_weight_update_refusal(server_args)
        self._sglang = SGLangEngine(
            server_args, engine_environment(placement, colocate=colocate), hidden_states_in_shared_memory=True
        )

    @property
    def hidden_size(self) -> int:
        return self._hidden_size

    def hidden_states(self, batch: TeacherBatch) -> torch.Tensor:
        self._refuse_unless_serving()
        if not batch.sequences:
            return torch.empty(0, self._hidden_size, dtype=self._dtype)
        image_data = image_data_for(batch.images)
        if image_data is not None:
            refuse_images_for(self._architectures, self._model_path)
        rids = request_ids(len(batch.sequences))
        try:
            outputs = self._sglang.generate(
                input_ids=batch.sequences,
                sampling_params=hidden_state_sampling_params(),
                return_hidden_states=True,
                rid=rids,
                image_data=image_data,
            )
            return gather_hidden_states(outputs, batch, self._hidden_size, self._dtype)
        finally:
            # Reading a request's rows removes its file; a batch refused or aborted part-way leaves the
            # files of the requests after it, which /dev/shm (RAM) would keep until the pod ends.
            remove_prefill_rows(rids)

    def generate(
        self,
        prompts: list[list[int]],
        sampling: SamplingConfig,
        images: list[ImageInputs | None] | None = None,
    ) -> list[list[int]]:
        """Answers to `prompts` (sequence-level KD), sampled as the rollout engines sample theirs."""
        self._refuse_unless_serving()
        if images and any(inputs is not None for inputs in images):
            refuse_images_for(self._architectures, self._model_path)
        return super().generate(prompts, sampling, images)

    def _refuse_unless_serving(self) -> None:
        if not self._placement.serves_requests:
            raise RuntimeError(
                f"node rank {self._placement.node_rank} of a multi-node teacher serves no requests; send "
                "batches to node rank 0"
            )

    def begin_weight_update(self) -> None:
        if self._weight_update_refusal is not None:
            raise ValueError(f"cannot update this SGLang teacher's weights: {self._weight_update_refusal}")
        self._sglang.begin_weight_update()

    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        self._sglang.load_tensors(list(named_tensors))

    def end_weight_update(self) -> None:
        self._sglang.end_weight_update()

    def sleep(self) -> None:
        if self._placement.serves_requests:
            self._sglang.release(ALL_MEMORY)

    def wake(self) -> None:
        if self._placement.serves_requests:
            self._sglang.resume(ALL_MEMORY)

    def close(self) -> None:
        self._sglang.shutdown()
