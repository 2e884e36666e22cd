"""Which model plays which part in a job, and with what loss settings: the answers every role shares."""

from kubedistill.api.job import DistillationJob
from kubedistill.api.spec import Mode, TeacherSpec
from kubedistill.runtime.losses.config import KDConfig


def has_teacher(job: DistillationJob) -> bool:
    """Whether teacher engines give hidden states in training: not in sft, nor in preference, whose
    teacher only writes the chosen answers before training (its reference is the student's own)."""
    return job.spec.mode not in (Mode.SFT, Mode.PREFERENCE)


def teacher_spec(job: DistillationJob) -> TeacherSpec:
    """The teacher's settings; in self-distillation with no teacher section, the student's own model."""
    spec = job.spec
    if spec.teachers is not None:
        # Several teachers share one vocabulary and tokenizer: the first answers for all of them (each
        # teacher's engines read their own, `runtime.teacher.several`).
        spec = spec.as_each_teacher()[0]
    if spec.teacher is None:
        return TeacherSpec(model=spec.student.model)
    if spec.teacher.model is None:
        return spec.teacher.model_copy(update={"model": spec.student.model})
    return spec.teacher


def teacher_model_path(job: DistillationJob) -> str | None:
    """The model whose head turns teacher hidden states into logits; None when there is no teacher."""
    return teacher_spec(job).model if has_teacher(job) else None


def kd_config(job: DistillationJob) -> KDConfig:
    """The loss settings; sft trains on the data alone (kdRatio 0), unless its algorithm distils the stored
    log-probabilities of a hosted teacher (sparseKd)."""
    from kubedistill.runtime.algorithms.base import algorithm_for  # the algorithms import the losses' config

    config = KDConfig.from_spec(job.spec.distillation)
    if not has_teacher(job) and not algorithm_for(job.spec).sparse_targets:
        return KDConfig(**{**config.__dict__, "kd_ratio": 0.0})
    return config


def student_tokenizer_path(job: DistillationJob) -> str:
    return job.spec.student.tokenizer or job.spec.student.model


def teacher_tokenizer_path(job: DistillationJob) -> str | None:
    if not has_teacher(job):
        return None
    teacher = teacher_spec(job)
    return teacher.tokenizer or teacher.model
