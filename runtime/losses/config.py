"""The distillation hyper-parameters the losses read, taken from `spec.distillation`.

Defaults are the spec's own (read from the pydantic model), so a test or a plugin that builds a `KDConfig`
by hand gets what an empty manifest would give.
"""

from dataclasses import dataclass
from typing import Any

from kubedistill.api.spec import DistillationSpec
from kubedistill.runtime.losses.mixture import TeacherMixture


def _spec_default(field: str) -> Any:
    return DistillationSpec.model_fields[field].default


@dataclass(frozen=True)
class KDConfig:
    loss: str = _spec_default("loss")
    temperature: float = _spec_default("temperature")
    kd_ratio: float = _spec_default("kd_ratio")
    jsd_beta: float = _spec_default("jsd_beta")
    skew_lambda: float = _spec_default("skew_lambda")
    adaptive_alpha: float = _spec_default("adaptive_alpha")
    hrl_top_k: int = _spec_default("hrl_top_k")
    chunk_size: int | None = _spec_default("loss_chunk_size")
    """None: chosen from the shapes (`chunking.memory_bound_chunk`)."""
    teachers: TeacherMixture | None = None
    """Several teachers (spec.teachers): their hidden states and heads side by side, and the target is their
    mixture (`mixture`); None for one teacher. Set by the student from the job, not read from the spec."""

    @classmethod
    def from_spec(cls, spec: DistillationSpec) -> "KDConfig":
        return cls(
            loss=spec.loss,
            temperature=spec.temperature,
            kd_ratio=spec.kd_ratio,
            jsd_beta=spec.jsd_beta,
            skew_lambda=spec.skew_lambda,
            adaptive_alpha=spec.adaptive_alpha,
            hrl_top_k=spec.hrl_top_k,
            chunk_size=spec.loss_chunk_size,
        )
