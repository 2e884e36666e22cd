"""Choosing and building a teacher engine from the spec."""

from kubedistill.api.spec import Backend, Precision, TeacherSpec
from kubedistill.runtime.backend_choice import engine_device, resolve_backend
from kubedistill.runtime.models import compute_dtype
from kubedistill.runtime.sglang_args import EnginePlacement
from kubedistill.runtime.teacher.backend import TeacherBackend


def build_teacher(
    spec: TeacherSpec, model_path: str, precision: Precision, *, colocate: bool, placement: EnginePlacement
) -> TeacherBackend:
    backend = resolve_backend(spec.backend)
    if backend == Backend.SGLANG:
        from kubedistill.runtime.teacher.sglang_backend import SGLangTeacher

        return SGLangTeacher(spec, model_path, placement, colocate=colocate, precision=precision)
    from kubedistill.runtime.teacher.transformers_backend import TransformersTeacher

    return TransformersTeacher(model_path, compute_dtype(precision), engine_device(placement))
