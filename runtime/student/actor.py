"""The Ray actor around one student rank: it resolves teacher object refs and forwards to `StudentWorker`."""

import time
from dataclasses import replace

import ray
import torch
from ray.actor import ActorHandle
from ray.exceptions import RayError

from kubedistill.api.job import DistillationJob
from kubedistill.runtime.cluster.actors import free_port
from kubedistill.runtime.engines.sglang.engine import join_weight_sync_group
from kubedistill.runtime.engines.weight_sync import (
    WeightSyncGroup,
    broadcast_tensors,
    open_weight_sync_group,
    tensor_metas,
    tensor_nbytes,
)
from kubedistill.runtime.student.batch import MicroBatch
from kubedistill.runtime.student.offload import StudentState
from kubedistill.runtime.student.optimizer import OptimizerPlace
from kubedistill.runtime.student.worker import (
    EvalStats,
    RankAddress,
    StepStats,
    StudentWorker,
    all_ranks_agree,
)
from kubedistill.runtime.teacher.transfer import from_wire


class TeacherUnavailable(RuntimeError):
    """A teacher output of this step could not be read on some rank (its engine died). All ranks raise it
    together before any collective, so no rank has changed anything and the step can be retried."""


def resolve_hidden(refs: list[ray.ObjectRef | None]) -> list[torch.Tensor | None]:
    present = [ref for ref in refs if ref is not None]
    values = iter(ray.get(present))
    return [None if ref is None else from_wire(next(values)) for ref in refs]


class StudentActor:
    def __init__(self) -> None:
        if not torch.cuda.is_available():
            # Ranks share the machine's cores with each other and the teacher: one thread each keeps them
            # from oversubscribing it (and keeps CPU runs deterministic).
            torch.set_num_threads(1)
        self.worker: StudentWorker | None = None
        self.weight_sync: torch.distributed.ProcessGroup | None = None

    def rendezvous_address(self) -> tuple[str, int]:
        """An address of this node and a free port on it, for rank 0 to host the process group."""
        return ray.util.get_node_ip_address(), free_port()

    def init(self, job: DistillationJob, address: RankAddress, total_steps: int) -> None:
        self.worker = StudentWorker(job, address, total_steps)

    def train_step(
        self, micro_batches: list[MicroBatch], teacher_refs: list[ray.ObjectRef | None], normalizer: int
    ) -> StepStats:
        started = time.perf_counter()
        hidden = self._resolve_on_every_rank(teacher_refs)
        fetched = time.perf_counter() - started
        stats = self._worker.train_step(micro_batches, hidden, normalizer)
        return replace(stats, fetch_seconds=fetched, actor_seconds=time.perf_counter() - started)

    def evaluate(
        self, micro_batches: list[MicroBatch], teacher_refs: list[ray.ObjectRef | None], normalizer: int
    ) -> EvalStats:
        return self._worker.evaluate(micro_batches, self._resolve_on_every_rank(teacher_refs), normalizer)

    def _resolve_on_every_rank(self, refs: list[ray.ObjectRef | None]) -> list[torch.Tensor | None]:
        # A rank that failed alone would leave the others waiting in a collective: agree first.
        try:
            hidden, problem = resolve_hidden(refs), None
        except RayError as error:
            hidden, problem = [], error
        if not all_ranks_agree(problem is None):
            where = problem or "on another rank"
            raise TeacherUnavailable(f"teacher hidden states could not be read: {where}")
        return hidden

    def push_weights(self, targets: list[ActorHandle], bucket_bytes: int, teacher: bool) -> int:
        """Send the student's weights to engines' `update_weights`, bucket by bucket, inside one weight-update
        session per engine (an asleep SGLang engine wakes its weights once per sync, not once per bucket)
        (collective: every rank is called; rank 0 gets the targets). Each bucket is put in the object store
        once for all targets. `teacher`: the self-distillation teacher's weights. Returns the bytes sent."""
        ray.get([target.begin_weight_update.remote() for target in targets])
        sent = 0
        for bucket in self._worker.full_weight_buckets(bucket_bytes, teacher=teacher):
            if targets and bucket:
                ref = ray.put(bucket)
                ray.get([target.update_weights.remote(ref) for target in targets])
                sent += sum(tensor_nbytes(named) for named in bucket)
        ray.get([target.end_weight_update.remote() for target in targets])
        return sent

    def join_weight_sync_group(self, group: WeightSyncGroup, sglang: bool) -> None:
        """Rank 0 joins the broadcast group of the rollout engines (replacing an earlier one): with SGLang's
        helper when they are SGLang engines, so both sides build the group the same way."""
        if sglang:
            self.weight_sync = join_weight_sync_group(group, self._worker.device.type)
        else:
            self.weight_sync = open_weight_sync_group(group, self._worker.device)

    def broadcast_weights(self, targets: list[ActorHandle], bucket_bytes: int) -> int:
        """Broadcast the student's weights to engines' `receive_weights`, bucket by bucket, over the group
        rank 0 joined (collective: every rank is called; rank 0 gets the targets). Returns the bytes sent."""
        sent = 0
        for bucket in self._worker.full_weight_buckets(bucket_bytes, on_device=True):
            if targets and bucket:
                if self.weight_sync is None:
                    raise RuntimeError("broadcast_weights needs join_weight_sync_group first")
                receiving = [target.receive_weights.remote(tensor_metas(bucket)) for target in targets]
                broadcast_tensors((tensor for _, tensor in bucket), self.weight_sync)
                ray.get(receiving)
                sent += sum(tensor_nbytes(named) for named in bucket)
        return sent

    def move_training_state(self, place: OptimizerPlace, parts: frozenset[StudentState]) -> None:
        self._worker.move_training_state(place, parts)

    def take_teacher_weights(self) -> None:
        self._worker.take_teacher_weights()

    def refresh_teacher_head(self) -> None:
        self._worker.refresh_teacher_head()

    def save_checkpoint(self, directory: str) -> None:
        self._worker.save_checkpoint(directory)

    def load_checkpoint(self, directory: str) -> None:
        self._worker.load_checkpoint(directory)

    def load_weights(self, directory: str) -> None:
        self._worker.load_weights(directory)

    def export(self, directory: str) -> None:
        self._worker.export(directory)

    def close(self) -> None:
        if self.worker is not None:
            self.worker.close()

    @property
    def _worker(self) -> StudentWorker:
        if self.worker is None:
            raise RuntimeError("StudentActor.init was not called")
        return self.worker
