"""Choosing and building a teacher engine from the spec."""

from kubedistill.api.spec import Backend, Precision, TeacherSpec
from kubedistill.runtime.backend_choice import local_device, resolve_backend
from kubedistill.runtime.models import compute_dtype
from kubedistill.runtime.teacher.backend import TeacherBackend


def build_teacher(
    spec: TeacherSpec, model_path: str, precision: Precision, *, colocate: bool
) -> TeacherBackend:
    backend = resolve_backend(spec.backend)
    if backend == Backend.SGLANG:
        from kubedistill.runtime.sglang_args import single_node_placement
        from kubedistill.runtime.teacher.sglang_backend import SGLangTeacher

        return SGLangTeacher(
            spec, model_path, single_node_placement(), colocate=colocate, precision=precision
        )
    from kubedistill.runtime.teacher.transformers_backend import TransformersTeacher

    return TransformersTeacher(model_path, compute_dtype(precision), local_device())
