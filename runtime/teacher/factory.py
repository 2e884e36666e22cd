"""Choosing and building a teacher engine from the spec."""

import importlib.util

import torch

from kubedistill.api.spec import Backend, Precision, TeacherSpec
from kubedistill.runtime.models import compute_dtype
from kubedistill.runtime.teacher.backend import TeacherBackend


def resolve_backend(requested: Backend) -> Backend:
    """`auto` is SGLang where it can run (a GPU and the `sglang` extra), transformers elsewhere."""
    if requested != Backend.AUTO:
        return requested
    if torch.cuda.is_available() and importlib.util.find_spec("sglang") is not None:
        return Backend.SGLANG
    return Backend.TRANSFORMERS


def build_teacher(
    spec: TeacherSpec, model_path: str, precision: Precision, *, colocate: bool
) -> TeacherBackend:
    backend = resolve_backend(spec.backend)
    if backend == Backend.SGLANG:
        from kubedistill.runtime.teacher.sglang_backend import SGLangTeacher, single_node_placement

        return SGLangTeacher(
            spec, model_path, single_node_placement(), colocate=colocate, precision=precision
        )
    from kubedistill.runtime.teacher.transformers_backend import TransformersTeacher

    device = (
        torch.device("cuda", torch.cuda.current_device())
        if torch.cuda.is_available()
        else torch.device("cpu")
    )
    return TransformersTeacher(model_path, compute_dtype(precision), device)
