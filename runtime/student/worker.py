"""One student rank: its parts built in order (the FSDP2-sharded module, the optimizer and schedule, the
self-distillation teacher's weights, the weight publisher, the checkpointer), and one train step at a time.

A plain object (the Ray actor around it only resolves object refs), so it runs in tests on gloo without Ray.
"""

import math
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.fsdp import FSDPModule

from kubedistill.api.job import DistillationJob
from kubedistill.api.spec import OnNonFinite
from kubedistill.runtime.models.loading import compute_dtype, load_tokenizer
from kubedistill.runtime.models.roles import student_tokenizer_path
from kubedistill.runtime.student.batch import MicroBatch
from kubedistill.runtime.student.checkpoint import RankCheckpointer
from kubedistill.runtime.student.clipping import LocalGradients
from kubedistill.runtime.student.context_parallel import ContextChunk, group_sample_divergences, rank_share
from kubedistill.runtime.student.module import build_module
from kubedistill.runtime.student.offload import StudentState, move_student
from kubedistill.runtime.student.optimizer import OptimizerPlace, StudentOptimizer
from kubedistill.runtime.student.parallelize import process_group_backend
from kubedistill.runtime.student.publish import WeightPublisher
from kubedistill.runtime.student.reference import ReferenceWeights
from kubedistill.runtime.student.teacher_weights import TeacherWeights


class NonFiniteLoss(RuntimeError):
    """The loss or the gradient norm was NaN or infinite and spec.training.onNonFinite is fail."""


@dataclass(frozen=True)
class StepStats:
    kd_sum: float
    ce_sum: float
    num_targets: int
    num_tokens: int
    grad_norm: float
    learning_rate: float
    skipped: bool
    compute_seconds: float = 0.0
    """Forward and backward passes of all micro-batches (with their reduce-scatters), on rank 0."""
    backbone_seconds: float = 0.0
    """Of `compute_seconds`: the student backbone's forward passes (FSDP2 all-gathers included)."""
    loss_seconds: float = 0.0
    """Of `compute_seconds`: the loss's chunk loop, which computes its gradients in the forward."""
    backward_seconds: float = 0.0
    """Of `compute_seconds`: the backward passes (FSDP2 reduce-scatters included)."""
    optimizer_seconds: float = 0.0
    """The all-reduce of the loss sums and the gradient norm, gradient clipping and the optimizer step, on
    rank 0."""
    fetch_seconds: float = 0.0
    """Reading the teacher's hidden states from the object store, on rank 0 (set by the actor)."""
    actor_seconds: float = 0.0
    """The whole call inside rank 0's actor; what the driver waited beyond it is Ray's (set by the actor)."""
    sample_divergences: tuple[tuple[float | None, ...], ...] = ()
    """This rank's micro-batches' per-sample mean divergences (`ForwardOutput.sample_divergences`), under
    the weights this step trains; the group puts every rank's together (`StudentActorGroup.step_result`)."""
    figures: dict[str, float] = field(default_factory=dict)
    """The algorithm's own sums (`Algorithm.figure_names`) over the whole step, every rank's."""

    def timings(self) -> dict[str, float]:
        """Every `*_seconds` figure, by name: where rank 0's step went."""
        return {name: value for name, value in asdict(self).items() if name.endswith("_seconds")}


@dataclass(frozen=True)
class EvalStats:
    kd_sum: float
    ce_sum: float
    num_targets: int
    agreements: int
    figures: dict[str, float] = field(default_factory=dict)
    """The algorithm's own sums (`Algorithm.figure_names`) over the whole evaluation, every rank's."""


@dataclass(frozen=True)
class RankAddress:
    rank: int
    world_size: int
    master_addr: str
    master_port: int


class StudentWorker:
    """The parts of one rank, each built whole here in order: process group, module, optimizer, the
    self-distillation teacher's weights, what publishes weights, the checkpointer."""

    def __init__(self, job: DistillationJob, address: RankAddress, total_steps: int) -> None:
        self.job = job
        self.address = address
        spec = job.spec
        use_cuda = torch.cuda.is_available()
        self.device = torch.device("cuda", torch.cuda.current_device()) if use_cuda else torch.device("cpu")
        dist.init_process_group(
            backend=process_group_backend(self.device.type),
            init_method=f"tcp://{address.master_addr}:{address.master_port}",
            rank=address.rank,
            world_size=address.world_size,
        )
        torch.manual_seed(spec.training.seed)
        self.tokenizer = load_tokenizer(student_tokenizer_path(job))
        self.module = build_module(job, self.device, address.world_size)
        projectors = {id(p) for p in self.module.algorithm.parameters()}
        self.optimizer = StudentOptimizer(
            (p for p in self.module.parameters() if id(p) not in projectors),
            self.module.algorithm.parameters(),
            spec.training,
            spec.distillation,
            total_steps,
            self.device,
        )
        self.teacher = TeacherWeights(job, self.module.student)
        self.reference = ReferenceWeights(self.module.student, keeps=self.module.algorithm.needs_reference)
        self.publisher = WeightPublisher(
            self.module,
            self.teacher,
            spec.student.lora if spec.student.lora.rank > 0 else None,
            address.rank,
            compute_dtype(spec.training.precision),
            self.device,
        )
        self.checkpointer = RankCheckpointer(
            self.module, self.optimizer, self.teacher, self.reference, address.rank
        )

    # -- training -------------------------------------------------------------------------------------------

    def train_step(
        self, micro_batches: list[MicroBatch], teacher_hidden: list[torch.Tensor | None], normalizer: int
    ) -> StepStats:
        micro_batches = self.with_reference(micro_batches)
        self.module.train()
        module = self.module
        assert isinstance(module, FSDPModule), "build_module shards the root"
        sums = torch.zeros(4, dtype=torch.float64)
        figures = torch.zeros(len(self._figure_names), dtype=torch.float64)
        # FSDP2 averages gradients over ranks, while the loss is already normalised by the global batch's
        # token count: scaling by the world size makes the reduced gradient the global batch's.
        scale = float(self.address.world_size)
        started = time.perf_counter()
        backbone = loss = backward = 0.0
        divergences: list[tuple[float | None, ...]] = []
        chunks: list[ContextChunk] = []
        group = self.module.context_group
        last = len(micro_batches) - 1
        if self.module.unsharded_through_step:
            # Every block's all-gather goes out at once (its forward waits for its own): one exchange a
            # step instead of one between each block's compute, which a rank waits out for its peers.
            for part in self.module.modules():
                if isinstance(part, FSDPModule):
                    part.unshard(async_op=True)
        for index, (batch, hidden) in enumerate(zip(micro_batches, teacher_hidden, strict=True)):
            if self.module.unsharded_through_step:
                # Gathered weights and unreduced gradients stay until the last micro-batch: one all-gather
                # and one reduce-scatter per block a step, however many micro-batches it has.
                module.set_requires_gradient_sync(index == last)
                module.set_reshard_after_backward(index == last)
            if group is not None:
                # Every rank of the context group holds the same micro-batch: this rank trains its chunk.
                batch, hidden = rank_share(batch, hidden, group)
                chunks.append(batch)
            forward = self.module(batch, hidden, float(normalizer))
            output = forward.loss
            backbone, loss = backbone + forward.backbone_seconds, loss + forward.loss_seconds
            divergences.append(tuple(forward.sample_divergences))
            backward_started = time.perf_counter()
            (output.loss * scale).backward()
            backward += time.perf_counter() - backward_started
            sums += torch.tensor(
                [output.kd_sum.item(), output.ce_sum.item(), output.num_tokens, batch.num_tokens],
                dtype=torch.float64,
            )
            figures += self._figures(output.figures)
        if group is not None:
            divergences = list(group_sample_divergences(chunks, divergences, group))
        computed = time.perf_counter()
        gradients = LocalGradients.of(self.module.parameters(), self.address.world_size)
        # The loss sums and the gradients' squared norm in one all-reduce: each collective is a point where
        # every rank waits for the slowest.
        reduced = torch.cat([sums, gradients.square_sum().reshape(1), figures])
        dist.all_reduce(reduced)
        sums, grad_norm, figures = reduced[:4], math.sqrt(float(reduced[4])), reduced[5:]
        gradients.clip_(grad_norm, self.job.spec.training.max_grad_norm)
        learning_rate = self.optimizer.learning_rate
        finite = math.isfinite(grad_norm) and bool(torch.isfinite(sums).all())
        if not finite and self.job.spec.training.on_non_finite == OnNonFinite.FAIL:
            self.optimizer.zero_grad()
            raise NonFiniteLoss(
                f"non-finite loss or gradient (grad norm {grad_norm}); spec.training.onNonFinite is fail"
            )
        if finite:
            self.optimizer.step()
            self.teacher.after_optimizer_step()
        self.optimizer.zero_grad()
        return StepStats(
            kd_sum=float(sums[0]),
            ce_sum=float(sums[1]),
            num_targets=int(sums[2]),
            num_tokens=int(sums[3]),
            grad_norm=grad_norm,
            learning_rate=learning_rate,
            skipped=not finite,
            compute_seconds=computed - started,
            backbone_seconds=backbone,
            loss_seconds=loss,
            backward_seconds=backward,
            optimizer_seconds=time.perf_counter() - computed,
            sample_divergences=tuple(divergences),
            figures=dict(zip(self._figure_names, figures.tolist(), strict=True)),
        )

    def move_training_state(self, place: OptimizerPlace, parts: frozenset[StudentState]) -> None:
        move_student(self.module, self.optimizer, self.device, place, parts)

    @torch.no_grad()
    def evaluate(
        self, micro_batches: list[MicroBatch], teacher_hidden: list[torch.Tensor | None], normalizer: int
    ) -> EvalStats:
        micro_batches = self.with_reference(micro_batches)
        self.module.eval()
        sums = torch.zeros(4 + len(self._figure_names), dtype=torch.float64)
        group = self.module.context_group
        for batch, hidden in zip(micro_batches, teacher_hidden, strict=True):
            if group is not None:
                # Each rank's chunk holds its own loss positions: the sums over all ranks count each once.
                batch, hidden = rank_share(batch, hidden, group)
            output = self.module(batch, hidden, float(normalizer), measure_agreement=True)
            loss = output.loss
            sums += torch.cat(
                [
                    torch.tensor(
                        [loss.kd_sum.item(), loss.ce_sum.item(), loss.num_tokens, output.agreements],
                        dtype=torch.float64,
                    ),
                    self._figures(loss.figures),
                ]
            )
        dist.all_reduce(sums)
        return EvalStats(
            kd_sum=float(sums[0]),
            ce_sum=float(sums[1]),
            num_targets=int(sums[2]),
            agreements=int(sums[3]),
            figures=dict(zip(self._figure_names, sums[4:].tolist(), strict=True)),
        )

    # -- the algorithm's own parts ---------------------------------------------------------------------------

    @property
    def _figure_names(self) -> Sequence[str]:
        return self.module.algorithm.figure_names

    def _figures(self, given: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """One micro-batch's figures in `figure_names`' order (a name it does not give counts 0)."""
        return torch.tensor(
            [float(given[name]) if name in given else 0.0 for name in self._figure_names], dtype=torch.float64
        )

    @torch.no_grad()
    def with_reference(self, micro_batches: list[MicroBatch]) -> list[MicroBatch]:
        """With a frozen reference (`Algorithm.needs_reference`): each micro-batch with the reference's
        log-probability of its labels (`extras["reference_logprobs"]`), scored under the kept weights before
        the step's own forward passes. Every rank scores all its micro-batches, placeholders included, so the
        ranks' FSDP2 collectives pair up."""
        if not self.reference.kept:
            return micro_batches
        training = self.module.training
        self.module.eval()
        scored = []
        with self.reference.swapped(self.module):
            for batch in micro_batches:
                output = self.module(batch, None, 1.0, score_labels=True)
                assert output.label_logprobs is not None, "score_labels asks for them"
                scores = output.label_logprobs.detach().to(torch.float32).cpu()
                scored.append(replace(batch, extras={**batch.extras, "reference_logprobs": scores}))
        self.module.train(training)
        return scored

    # -- the other parts, for the actor ----------------------------------------------------------------------

    def take_teacher_weights(self) -> None:
        self.teacher.take_student()

    def full_weight_buckets(
        self, bucket_bytes: int, teacher: bool = False, on_device: bool = False
    ) -> Iterator[list[tuple[str, torch.Tensor]]]:
        return self.publisher.buckets(bucket_bytes, teacher, on_device)

    def refresh_teacher_head(self) -> None:
        self.publisher.refresh_teacher_head()

    def save_checkpoint(self, directory: str) -> None:
        self.checkpointer.save(directory)

    def load_checkpoint(self, directory: str) -> None:
        self.checkpointer.load(directory)

    def load_weights(self, directory: str) -> None:
        self.checkpointer.load_weights(directory)
        # A job started from another job's student refers to that student, not to spec.student.model.
        self.reference.take_student()

    def export(self, directory: str) -> None:
        processor = Path(self.job.spec.student.model) / "preprocessor_config.json"
        self.publisher.export(directory, self.tokenizer, processor if processor.is_file() else None)

    def close(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()


def all_ranks_agree(ok: bool) -> bool:
    """True on every rank when `ok` is true on every rank (collective, on a CPU tensor: gloo's part of the
    default group, see `process_group_backend`)."""
    flag = torch.tensor([1 if ok else 0], dtype=torch.int32)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())
