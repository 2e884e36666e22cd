"""The Ray actor around one teacher engine: it hands hidden states to the object store in wire format."""

import logging

from kubedistill.api.job import DistillationJob
from kubedistill.api.spec import Attention, Backend, Precision, TeacherSpec
from kubedistill.runtime.engines.actor import EngineActor
from kubedistill.runtime.engines.layout import EnginePlacement, engine_device, resolve_backend
from kubedistill.runtime.engines.sglang.hidden_states import shared_memory_shortfall, shared_memory_size
from kubedistill.runtime.models.loading import compute_dtype
from kubedistill.runtime.models.roles import teacher_spec
from kubedistill.runtime.teacher.backend import TeacherBackend, TeacherBatch
from kubedistill.runtime.teacher.transfer import WireTensor, to_wire

log = logging.getLogger(__name__)


class TeacherActor(EngineActor):
    def build(self, placement: EnginePlacement) -> TeacherBackend:
        teacher = teacher_spec(self.job)
        assert teacher.model is not None, "teacher_spec fills a missing teacher model in with the student's"
        backend = build_teacher(
            teacher,
            teacher.model,
            self.job.spec.training.precision,
            colocate=self.job.spec.cluster.colocate,
            placement=placement,
            attention=self.job.spec.student.attention,
            seed=self.job.spec.training.seed,
        )
        if resolve_backend(teacher.backend) == Backend.SGLANG and placement.serves_requests:
            warn_of_a_small_shared_memory(self.job, backend.hidden_size)
        return backend

    def hidden_size(self) -> int:
        return self.backend.hidden_size

    def hidden_states(self, batch: TeacherBatch) -> WireTensor:
        return to_wire(self.backend.hidden_states(batch))


def build_teacher(
    spec: TeacherSpec,
    model_path: str,
    precision: Precision,
    *,
    colocate: bool,
    placement: EnginePlacement,
    attention: Attention = Attention.SDPA,
    seed: int | None = None,
) -> TeacherBackend:
    """`seed`: an SGLang engine's sampling seed (sequence-level KD); a transformers teacher takes each
    call's."""
    backend = resolve_backend(spec.backend)
    if backend == Backend.SGLANG:
        from kubedistill.runtime.engines.sglang.teacher import SGLangTeacher

        return SGLangTeacher(
            spec,
            model_path,
            placement,
            colocate=colocate,
            precision=precision,
            attention=attention,
            seed=seed,
        )
    from kubedistill.runtime.engines.transformers.teacher import TransformersTeacher

    return TransformersTeacher(model_path, compute_dtype(precision), engine_device(placement), attention)


def largest_teacher_batch_tokens(job: DistillationJob) -> int:
    """Tokens of the largest micro-batch the teacher is sent: microBatchSize sequences of up to maxLength,
    capped by maxTokensPerDevice (a micro-batch holds at least one sequence)."""
    training, longest = job.spec.training, job.spec.data.max_length
    tokens = training.micro_batch_size * longest
    if training.max_tokens_per_device is not None:
        tokens = min(tokens, max(training.max_tokens_per_device, longest))
    return tokens


def warn_of_a_small_shared_memory(job: DistillationJob, hidden_size: int) -> None:
    """Logged on the teacher's node (Ray forwards it to the driver's log): a warning, since a batch smaller
    than the largest possible one still fits, and what else uses /dev/shm varies."""
    size = shared_memory_size()
    itemsize = compute_dtype(job.spec.training.precision).itemsize
    warning = (
        None
        if size is None
        else shared_memory_shortfall(size, largest_teacher_batch_tokens(job), hidden_size, itemsize)
    )
    if warning is not None:
        log.warning("%s", warning)
