"""One step's work laid out for the ranks, with the teacher's part of it already dispatched.

The teacher's hidden states for each micro-batch are requested here, as object refs that go straight from the
teacher actors to the student ranks; the trainer awaits them only when the step that needs them starts, so the
teacher computes step N+1 while the students train step N (unless they share GPUs).
"""

import time
from collections import defaultdict, deque
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import ray

from kubedistill.runtime.algorithms.base import Algorithm
from kubedistill.runtime.data.batching import shard_micro_batches, strided_micro_batches
from kubedistill.runtime.data.sample import Sample
from kubedistill.runtime.student.batch import MicroBatch
from kubedistill.runtime.student.group import RankWork
from kubedistill.runtime.teacher.backend import TeacherBatch
from kubedistill.runtime.trainer.colocation import GpuPolicy
from kubedistill.runtime.trainer.groups import Groups


@dataclass(frozen=True)
class StepPlan:
    work: list[RankWork]
    normalizer: int
    """Target tokens of the whole global batch: every rank's loss is divided by it."""
    teacher_positions: int
    """Positions whose hidden states the teacher returns (what crosses the network)."""
    rollout_seconds: float = 0.0
    order: list[int] = field(default_factory=list)
    """The step's place of each sample, in the order the ranks' micro-batches hold them (rank by rank,
    micro-batch by micro-batch): what brings the ranks' per-sample figures back to the step's samples."""

    def in_step_order(self, per_micro_batch: Sequence[Sequence[float | None]]) -> list[float | None]:
        """Figures given a micro-batch at a time, in the ranks' order, as the step's samples have them."""
        figures = [figure for batch in per_micro_batch for figure in batch]
        assert len(figures) == len(self.order), "a figure for each of the step's samples"
        ordered: list[float | None] = [None] * len(figures)
        for place, figure in zip(self.order, figures, strict=True):
            ordered[place] = figure
        return ordered

    def teacher_refs(self) -> list[ray.ObjectRef]:
        # Once each: a context group's ranks share their micro-batches' refs.
        return list(
            dict.fromkeys(ref for share in self.work for ref in share.teacher_refs if ref is not None)
        )


class Planner:
    def __init__(
        self,
        groups: Groups,
        gpus: GpuPolicy,
        algorithm: type[Algorithm],
        pad_id: int,
        micro_batch_size: int,
        max_tokens_per_device: int | None,
        packing: bool = False,
        context_parallel: int = 1,
    ) -> None:
        self._groups = groups
        self._gpus = gpus
        self._extras = algorithm.micro_batch_extras
        self._normalizer = algorithm.normalizer
        self._pad_id = pad_id
        self._micro_batch_size = micro_batch_size
        self._max_tokens = max_tokens_per_device
        self._packing = packing
        """Each micro-batch one padding-free row (`MicroBatch.from_samples(packed=True)`)."""
        self._context = context_parallel
        """Consecutive ranks that share every micro-batch, each training its chunk of the sequence
        (spec.student.contextParallel): the batch is cut over world size / this many data shards."""

    def train_steps(self, batches: list[tuple[list[Sample], float]]) -> list[StepPlan]:
        """The plans of steps whose teacher work goes out together (a colocated wake's steps): each step's
        global batch, with its rollout seconds, cut into micro-batches per rank (token-balanced)."""
        layouts = [
            shard_micro_batches(
                samples,
                self._groups.students.world_size // self._context,
                self._micro_batch_size,
                self._max_tokens,
                self._packing,
            )
            for samples, _ in batches
        ]
        plans = self._lay_out(layouts, [seconds for _, seconds in batches])
        return [
            replace(plan, order=sample_order(samples, shards))
            for plan, (samples, _), shards in zip(plans, batches, layouts, strict=True)
        ]

    def evaluation(self, samples: list[Sample]) -> StepPlan:
        """The eval set, strided over the ranks; every rank runs the same number of micro-batches (FSDP2
        collectives), so short ranks get empty ones."""
        ranks = self._groups.students.world_size // self._context
        (plan,) = self._lay_out([strided_micro_batches(samples, ranks, self._micro_batch_size)], [0.0])
        return plan

    def _lay_out(
        self, layouts: list[list[list[list[Sample]]]], rollout_seconds: list[float]
    ) -> list[StepPlan]:
        """Each step's work, its teacher work asked in one go (`GpuPolicy.hidden_states_refs`: a colocated
        teacher's turns); a step's shards are indexed [data shard][micro-batch]."""
        requests = [
            [
                (shard, index, teacher_batch(batch))
                for shard, batches in enumerate(shards)
                for index, batch in enumerate(batches)
                if batch
            ]
            for shards in layouts
        ]
        answers = self._gpus.hidden_states_refs(
            self._groups.teacher, [[request for _, _, request in step] for step in requests]
        )
        return [
            self._plan(shards, step_requests, step_answers, seconds)
            for shards, step_requests, step_answers, seconds in zip(
                layouts, requests, answers, rollout_seconds, strict=True
            )
        ]

    def _plan(
        self,
        shards: list[list[list[Sample]]],
        requests: list[tuple[int, int, TeacherBatch]],
        answers: list[ray.ObjectRef | None],
        rollout_seconds: float,
    ) -> StepPlan:
        """Work for each data shard's ranks: a context group's ranks get the same micro-batches and teacher
        refs; the normaliser counts each shard's targets once."""
        normalizer = self._normalizer([sample for batches in shards for batch in batches for sample in batch])
        refs = {(shard, index): ref for (shard, index, _), ref in zip(requests, answers, strict=True)}
        shares = [
            RankWork(
                micro_batches=[
                    MicroBatch.from_samples(batch, self._pad_id, self._extras(batch), self._packing)
                    for batch in batches
                ],
                teacher_refs=[refs.get((shard, index)) for index in range(len(batches))],
            )
            for shard, batches in enumerate(shards)
        ]
        # Ranks as context_mesh lays them out: each `context` consecutive ranks share a data shard.
        work = [share for share in shares for _ in range(self._context)]
        positions = sum(
            request.num_positions
            for (_, _, request), ref in zip(requests, answers, strict=True)
            if ref is not None
        )
        return StepPlan(work, max(normalizer, 1), positions, rollout_seconds)


def sample_order(samples: Sequence[Sample], shards: list[list[list[Sample]]]) -> list[int]:
    """The place in `samples` of each sample of `shards`, rank by rank, micro-batch by micro-batch. A sample
    is known by its identity (the same record twice in a batch is one object twice: it takes its places in
    turn)."""
    places: defaultdict[int, deque[int]] = defaultdict(deque)
    for place, sample in enumerate(samples):
        places[id(sample)].append(place)
    return [places[id(sample)].popleft() for batches in shards for batch in batches for sample in batch]


def await_teacher(plan: StepPlan) -> float:
    """Seconds spent waiting for the plan's hidden states (zero when the teacher was ahead)."""
    refs = plan.teacher_refs()
    started = time.perf_counter()
    if refs:
        ray.wait(refs, num_returns=len(refs), fetch_local=False)
    return time.perf_counter() - started


def teacher_batch(samples: list[Sample]) -> TeacherBatch:
    """What the teacher sees of a micro-batch: its own input (context distillation) at its own positions."""
    # Images come with the one sequence teacher and student share (no teacher input of its own).
    images = [s.images for s in samples] if any(s.images is not None for s in samples) else []
    return TeacherBatch(
        sequences=[s.teacher_sequence.tolist() for s in samples],
        positions=[s.teacher_loss_positions() for s in samples],
        images=images,
    )
