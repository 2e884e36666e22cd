"""The module FSDP2 wraps: the student, the algorithm and the teacher's output head, with the loss computed
inside `forward`; and how it is built (`build_module`).

Computing the loss inside the root module's forward is what lets it use the student's output head: FSDP2
unshards the root's parameters (embeddings, final norm, lm_head) only around its forward; outside it they are
DTensor shards.
"""

import time
from dataclasses import dataclass, field, replace

import torch
from torch import nn
from torch.distributed import ProcessGroup
from transformers import PreTrainedModel

from kubedistill.api.job import DistillationJob
from kubedistill.api.spec import PreferenceSpec, ReinforcementSpec
from kubedistill.runtime.algorithms.base import Algorithm, AlgorithmContext, LossInputs, algorithm_for
from kubedistill.runtime.losses.fused import top1_agreements
from kubedistill.runtime.losses.label_logprobs import label_logprobs
from kubedistill.runtime.losses.mixture import TeacherMixture
from kubedistill.runtime.losses.output import LossOutput, per_sample_means
from kubedistill.runtime.models.loading import compute_dtype, load_causal_lm, load_lm_head_weight
from kubedistill.runtime.models.roles import (
    kd_config,
    student_tokenizer_path,
    teacher_model_path,
    teacher_tokenizer_path,
)
from kubedistill.runtime.models.vision import backbone, freeze_vision_tower, language_config, vision_tower
from kubedistill.runtime.student.batch import MicroBatch
from kubedistill.runtime.student.context_parallel import ContextChunk, use_context_parallel_attention
from kubedistill.runtime.student.lora import apply_lora
from kubedistill.runtime.student.packed_attention import (
    BASES,
    PACKED_LENGTHS,
    segment_lengths,
    use_packed_attention,
)
from kubedistill.runtime.student.parallelize import (
    apply_fsdp,
    context_mesh,
    device_memory_bytes,
    device_mesh,
    keeps_unsharded,
)
from kubedistill.runtime.teacher.several import teacher_weights


@dataclass(frozen=True)
class ForwardOutput:
    loss: LossOutput
    agreements: int
    """Positions where student and teacher agree on the most likely next token (when measured)."""
    backbone_seconds: float = 0.0
    """The backbone's forward pass (with FSDP2's all-gathers of its blocks)."""
    loss_seconds: float = 0.0
    """The algorithm's loss (the fused loss computes its gradients here, in the forward)."""
    sample_divergences: list[float | None] = field(default_factory=list)
    """Each sample's mean divergence over its targets, in the micro-batch's order of samples; None where
    the algorithm gives no divergence per position (`LossOutput.kd_per_position`)."""
    label_logprobs: torch.Tensor | None = None
    """[targets] the weights' log-probability of each label, when asked (`score_labels`) instead of a loss."""


class DistillationModule(nn.Module):
    # Declared for the type checker: nn.Module's __getattr__ types a registered submodule or buffer as
    # `Tensor | Module`. A LoRA student is a peft model, which forwards these calls to the model it wraps.
    student: PreTrainedModel
    teacher_head: torch.Tensor | None
    context_group: ProcessGroup | None = None
    """The ranks this one's micro-batches are cut over (spec.student.contextParallel > 1; build_module)."""

    def __init__(
        self,
        student: PreTrainedModel,
        algorithm: Algorithm,
        teacher_head: torch.Tensor | None,
        unsharded_through_step: bool,
    ) -> None:
        super().__init__()
        self.student = student
        self.algorithm = algorithm
        self.unsharded_through_step = unsharded_through_step
        """Whether FSDP2 keeps the weights gathered and the gradients unreduced until a step's last
        micro-batch (`keeps_unsharded`); the worker tells FSDP2 so before each micro-batch."""
        # A buffer, not a parameter: FSDP2 shards parameters only, so every rank keeps the whole frozen
        # head; and not persistent, so checkpoints and exports hold the student alone.
        self.register_buffer("teacher_head", teacher_head, persistent=False)

    def forward(
        self,
        batch: MicroBatch,
        teacher_hidden: torch.Tensor | None,
        normalizer: float,
        measure_agreement: bool = False,
        score_labels: bool = False,
    ) -> ForwardOutput:
        """The algorithm's loss of the micro-batch; `score_labels`: each label's log-probability under the
        weights instead (the reference's turn, `ReferenceWeights.swapped`), asked through this same call
        because the FSDP2 root's forward is what gathers the output head."""
        started = time.perf_counter()
        hidden = self.student_hidden_states(batch)
        backbone_done = time.perf_counter()
        selected = hidden[batch.rows.to(hidden.device), batch.columns.to(hidden.device)]
        head = self.output_head()
        if score_labels:
            scores = label_logprobs(
                selected, head, batch.labels.to(selected.device), self.algorithm.context.config.chunk_size
            )
            zero = scores.new_zeros(())
            return ForwardOutput(LossOutput(zero, zero, zero, 0), 0, label_logprobs=scores)
        teacher = None if teacher_hidden is None else teacher_hidden.to(selected.device)
        output = self.algorithm(
            LossInputs(
                student_hidden=selected,
                student_head=head,
                teacher_hidden=teacher,
                # A placeholder micro-batch has no teacher output, and then no teacher head either.
                teacher_head=None if teacher is None else self.teacher_head,
                labels=batch.labels.to(selected.device),
                normalizer=normalizer,
                extras={name: value.to(selected.device) for name, value in batch.extras.items()},
                sample_index=None if batch.sample_index is None else batch.sample_index.to(selected.device),
            )
        )
        loss_seconds = time.perf_counter() - backbone_done
        if batch.num_targets == 0:
            # A placeholder micro-batch: the zero still has to reach every parameter so that this rank's
            # backward runs the same FSDP2 reduce-scatters as the ranks with real data.
            touch = hidden.sum() * 0.0 + head.sum() * 0.0
            output = LossOutput(output.loss + touch, output.kd_sum, output.ce_sum, output.num_tokens)
        agreements = 0
        # Token ids of two vocabularies cannot be compared: no agreement across tokenizers.
        teacher_head = self.teacher_head
        if (
            measure_agreement
            and batch.num_targets
            and not self.algorithm.cross_tokenizer
            and teacher is not None
            and teacher_head is not None
            and teacher.shape[0] == selected.shape[0]
        ):
            chunk = self.algorithm.context.config.chunk_size
            teachers = self.algorithm.context.config.teachers
            agreements = top1_agreements(selected, head, teacher, teacher_head, chunk, teachers)
        return ForwardOutput(
            output, agreements, backbone_done - started, loss_seconds, sample_divergences(batch, output)
        )

    def student_hidden_states(self, batch: MicroBatch) -> torch.Tensor:
        device = self.output_head().device
        outputs = backbone(self.student)(
            input_ids=batch.input_ids.to(device),
            use_cache=False,
            **_sequence_bounds(batch, device),
            **{name: value.to(device) for name, value in batch.images.items()},
        )
        return outputs.last_hidden_state

    def output_head(self) -> torch.Tensor:
        return output_embeddings(self.student).weight


def sample_divergences(batch: MicroBatch, output: LossOutput) -> list[float | None]:
    """Each sample's mean divergence (None for each without `output.kd_per_position`): one [targets] float
    tensor a micro-batch, reduced here on the rank, so a step returns one figure a sample."""
    if output.kd_per_position is None or batch.sample_index is None:
        return [None] * batch.samples
    return per_sample_means(output.kd_per_position, batch.labels, batch.sample_index, batch.samples)


def _sequence_bounds(batch: MicroBatch, device: torch.device) -> dict[str, object]:
    """What tells the model where its sequences are: the padded rows' attention mask, or a packed row's
    restarting positions with no attention mask at all.

    transformers (5.x) looks for packed sequences only when the attention mask is None and there is no cache
    (masking_utils.py:864-870, `_preprocess_mask_arguments`): a new sequence starts wherever a position is not
    the previous one plus 1 (`find_packed_sequence_indices`, masking_utils.py:756-758), so a first sample of
    a single token is found too; sdpa and eager then get a causal mask confined to each sequence
    (masking_utils.py:991-1002). flash-attention takes its varlen path when the one row's positions restart
    (modeling_flash_attention_utils.py:562-577 and 853). A student on the packed attention (sdpa and eager
    under packing, `build_module`) gets no mask but the samples' lengths. The row has no padding to treat: a
    packed micro-batch is one row holding exactly its samples' tokens.
    """
    if isinstance(batch, ContextChunk):
        # One rank's chunk of a context-parallel micro-batch: its key mask over the whole sequence.
        return batch.sequence_bounds(device)
    if batch.position_ids is not None:
        # The samples' lengths, found once here for every layer of the packed attention (`packed_attention`);
        # other implementations ignore the kwarg.
        return {
            "position_ids": batch.position_ids.to(device),
            PACKED_LENGTHS: segment_lengths(batch.position_ids),
        }
    return {"attention_mask": batch.attention_mask.to(device)}


def build_module(job: DistillationJob, device: torch.device, world_size: int) -> DistillationModule:
    """The student (LoRA applied when asked), the algorithm and the teacher's frozen output head, as one
    module, sharded by FSDP2 over `world_size` ranks."""
    spec = job.spec
    dtype = compute_dtype(spec.training.precision)
    student = load_causal_lm(
        spec.student.model, torch.float32, spec.student.attention, spec.student.liger_kernel
    )
    if spec.training.packing and spec.student.attention in BASES and vision_tower(student) is None:
        # Packed rows pay each sample's own attention, not the whole row's (`packed_attention`); a
        # context-parallel student switches to its own attention afterwards. A vision-language model's
        # vision tower (bidirectional, its own segments) keeps the implementation it was loaded with.
        use_packed_attention(student, str(spec.student.attention))
    if spec.student.freeze_vision:
        freeze_vision_tower(student)
    if spec.student.gradient_checkpointing:
        student.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if spec.student.lora.rank > 0:
        student = apply_lora(student, spec.student.lora)
    teacher_path = teacher_model_path(job)
    teacher_head, teachers = _teacher_heads(job, dtype)
    teacher_head = None if teacher_head is None else teacher_head.to(device)
    algorithm = algorithm_for(spec)(
        AlgorithmContext(
            config=replace(kd_config(job), teachers=teachers),
            student_hidden_size=int(language_config(student.config).hidden_size),
            teacher_hidden_size=None if teacher_head is None else int(teacher_head.shape[1]),
            student_tokenizer=student_tokenizer_path(job),
            teacher_tokenizer=teacher_tokenizer_path(job),
            teacher_model=teacher_path,
            distillation=spec.distillation,
            preference=spec.preference or PreferenceSpec(),
            reinforcement=spec.reinforcement or ReinforcementSpec(),
        )
    )
    algorithm.initialise(output_embeddings(student).weight, teacher_head)
    unsharded = keeps_unsharded(
        spec.student.reshard_after_forward,
        world_size,
        unsharded_bytes([*student.parameters(), *algorithm.parameters()], dtype),
        device_memory_bytes(device, world_size),
        spec.student.cpu_offload,
    )
    module = DistillationModule(student, algorithm, teacher_head, unsharded).to(device)
    if spec.student.context_parallel > 1:
        # After the packed attention's switch: a context-parallel chunk needs its own attention (its key mask
        # over the whole sequence), packed or padded.
        use_context_parallel_attention(student)
        mesh, module.context_group = context_mesh(device.type, world_size, spec.student.context_parallel)
    else:
        mesh = device_mesh(device.type, world_size, spec.student.fsdp_shard_size)
    apply_fsdp(
        module, student, mesh, param_dtype=dtype, cpu_offload=spec.student.cpu_offload, unsharded=unsharded
    )
    return module


def _teacher_heads(
    job: DistillationJob, dtype: torch.dtype
) -> tuple[torch.Tensor | None, TeacherMixture | None]:
    """The teacher's output head; with spec.teachers every teacher's, side by side ([vocab x sum d_t], in
    the teachers' order, as their hidden states arrive) and the mixture that splits them. None without a
    teacher."""
    if job.spec.teachers is None:
        path = teacher_model_path(job)
        return (None if path is None else load_lm_head_weight(path, dtype)), None
    heads = [load_lm_head_weight(teacher.model, dtype) for teacher in job.spec.teachers]
    mixture = TeacherMixture.of([int(head.shape[1]) for head in heads], teacher_weights(job))
    return torch.cat(heads, dim=1), mixture


def unsharded_bytes(parameters: list[nn.Parameter], dtype: torch.dtype) -> int:
    """Bytes of every parameter gathered whole in `dtype`, and of the gradients of those that train."""
    weights = sum(p.numel() for p in parameters)
    gradients = sum(p.numel() for p in parameters if p.requires_grad)
    return (weights + gradients) * dtype.itemsize


def output_embeddings(model: PreTrainedModel) -> nn.Module:
    """The model's output head (lm_head): every causal LM we train has one."""
    head = model.get_output_embeddings()
    assert head is not None, f"{type(model).__name__} has no output embeddings"
    return head
