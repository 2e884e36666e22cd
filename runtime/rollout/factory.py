"""Choosing and building a rollout engine from the spec; it starts from the student's initial weights."""

from kubedistill.api.job import DistillationJob, SpecError
from kubedistill.api.spec import Backend
from kubedistill.runtime.backend_choice import engine_device, resolve_backend
from kubedistill.runtime.models import compute_dtype
from kubedistill.runtime.rollout.backend import RolloutBackend
from kubedistill.runtime.sglang_args import EnginePlacement


def build_rollout(job: DistillationJob, placement: EnginePlacement) -> RolloutBackend:
    spec = job.spec
    if spec.rollout is None:
        raise SpecError("spec.rollout", "required when spec.mode is onPolicy")
    model_path = spec.student.model
    if resolve_backend(spec.rollout.backend) == Backend.SGLANG:
        from kubedistill.runtime.rollout.sglang_backend import SGLangRollout

        return SGLangRollout(
            spec.rollout,
            model_path,
            placement,
            colocate=spec.cluster.colocate,
            precision=spec.training.precision,
            seed=spec.training.seed,
        )
    from kubedistill.runtime.rollout.transformers_backend import TransformersRollout

    return TransformersRollout(model_path, compute_dtype(spec.training.precision), engine_device(placement))
