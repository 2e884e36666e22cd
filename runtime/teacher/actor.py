"""The Ray actor around one teacher engine: it hands hidden states to the object store in wire format."""

from kubedistill.api.spec import Backend, Precision, TeacherSpec
from kubedistill.runtime.engines.actor import EngineActor
from kubedistill.runtime.engines.layout import EnginePlacement, engine_device, resolve_backend
from kubedistill.runtime.models.loading import compute_dtype
from kubedistill.runtime.models.roles import teacher_spec
from kubedistill.runtime.teacher.backend import TeacherBackend, TeacherBatch
from kubedistill.runtime.teacher.transfer import WireTensor, to_wire


class TeacherActor(EngineActor):
    def build(self, placement: EnginePlacement) -> TeacherBackend:
        teacher = teacher_spec(self.job)
        assert teacher.model is not None, "teacher_spec fills a missing teacher model in with the student's"
        return build_teacher(
            teacher,
            teacher.model,
            self.job.spec.training.precision,
            colocate=self.job.spec.cluster.colocate,
            placement=placement,
        )

    def hidden_size(self) -> int:
        return self.backend.hidden_size

    def hidden_states(self, batch: TeacherBatch) -> WireTensor:
        return to_wire(self.backend.hidden_states(batch))


def build_teacher(
    spec: TeacherSpec, model_path: str, precision: Precision, *, colocate: bool, placement: EnginePlacement
) -> TeacherBackend:
    backend = resolve_backend(spec.backend)
    if backend == Backend.SGLANG:
        from kubedistill.runtime.engines.sglang.teacher import SGLangTeacher

        return SGLangTeacher(spec, model_path, placement, colocate=colocate, precision=precision)
    from kubedistill.runtime.engines.transformers.teacher import TransformersTeacher

    return TransformersTeacher(model_path, compute_dtype(precision), engine_device(placement))
