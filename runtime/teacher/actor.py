"""The Ray actor around one teacher engine: it hands hidden states to the object store in wire format."""

import torch

from kubedistill.api.job import DistillationJob
from kubedistill.runtime.roles import teacher_spec
from kubedistill.runtime.teacher.backend import TeacherBatch
from kubedistill.runtime.teacher.factory import build_teacher
from kubedistill.runtime.transfer import WireTensor, to_wire


class TeacherActor:
    def __init__(self, job: DistillationJob) -> None:
        if not torch.cuda.is_available():
            torch.set_num_threads(1)
        spec = job.spec
        teacher = teacher_spec(job)
        self.backend = build_teacher(
            teacher, teacher.model, spec.training.precision, colocate=spec.cluster.colocate
        )

    def hidden_size(self) -> int:
        return self.backend.hidden_size

    def hidden_states(self, batch: TeacherBatch) -> WireTensor:
        return to_wire(self.backend.hidden_states(batch))

    def update_weights(self, named_tensors: list[tuple[str, torch.Tensor]]) -> None:
        self.backend.update_weights(named_tensors)

    def named_parameters(self) -> dict[str, torch.Tensor]:
        """The engine's current weights (transformers only), to check a weight sync."""
        return self.backend.named_parameters()

    def sleep(self) -> None:
        self.backend.sleep()

    def wake(self) -> None:
        self.backend.wake()

    def close(self) -> None:
        self.backend.close()
