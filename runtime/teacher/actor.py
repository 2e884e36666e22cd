"""The Ray actor around one teacher engine: it hands hidden states to the object store in wire format."""

from kubedistill.runtime.engines import EngineActor
from kubedistill.runtime.roles import teacher_spec
from kubedistill.runtime.sglang_args import EnginePlacement
from kubedistill.runtime.teacher.backend import TeacherBackend, TeacherBatch
from kubedistill.runtime.teacher.factory import build_teacher
from kubedistill.runtime.transfer import WireTensor, to_wire


class TeacherActor(EngineActor):
    def build(self, placement: EnginePlacement) -> TeacherBackend:
        teacher = teacher_spec(self.job)
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
