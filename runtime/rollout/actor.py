"""The Ray actor around one rollout engine, and the engine it builds from the spec (it starts from the
student's initial weights)."""

from kubedistill.api.job import DistillationJob, SpecError
from kubedistill.api.spec import Backend
from kubedistill.runtime.engines.actor import EngineActor
from kubedistill.runtime.engines.layout import EnginePlacement, engine_device, resolve_backend
from kubedistill.runtime.models.loading import compute_dtype
from kubedistill.runtime.rollout.backend import RolloutBackend


class RolloutActor(EngineActor):
    def build(self, placement: EnginePlacement) -> RolloutBackend:
        return build_rollout(self.job, placement)


def build_rollout(job: DistillationJob, placement: EnginePlacement) -> RolloutBackend:
    spec = job.spec
    if spec.rollout is None:
        raise SpecError("spec.rollout", "required when spec.mode is onPolicy")
    model_path = spec.student.model
    if resolve_backend(spec.rollout.backend) == Backend.SGLANG:
        from kubedistill.runtime.engines.sglang.rollout import SGLangRollout

        return SGLangRollout(
            spec.rollout,
            model_path,
            placement,
            colocate=spec.cluster.colocate,
            precision=spec.training.precision,
            seed=spec.training.seed,
            attention=spec.student.attention,
        )
    from kubedistill.runtime.engines.transformers.rollout import TransformersRollout

    return TransformersRollout(
        model_path, compute_dtype(spec.training.precision), engine_device(placement), spec.student.attention
    )
