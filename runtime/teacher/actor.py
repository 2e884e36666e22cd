"""The Ray actor around one teacher engine: it hands hidden states to the object store in wire format."""

from kubedistill.api.job import DistillationJob
from kubedistill.runtime.engines import EngineActor
from kubedistill.runtime.roles import teacher_spec
from kubedistill.runtime.teacher.backend import TeacherBatch
from kubedistill.runtime.teacher.factory import build_teacher
from kubedistill.runtime.transfer import WireTensor, to_wire


class TeacherActor(EngineActor):
    def __init__(self, job: DistillationJob) -> None:
        super().__init__()
        spec = job.spec
        teacher = teacher_spec(job)
        self.backend = build_teacher(
            teacher, teacher.model, spec.training.precision, colocate=spec.cluster.colocate
        )

    def hidden_size(self) -> int:
        return self.backend.hidden_size

    def hidden_states(self, batch: TeacherBatch) -> WireTensor:
        return to_wire(self.backend.hidden_states(batch))
