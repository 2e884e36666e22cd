"""The self-distillation teacher's weights on a student rank: kept only when the teacher is not simply the
student, moved toward it by an EMA, or copied at each teacher update."""

import pytest
import torch

from kubedistill.api import parse_job
from kubedistill.runtime.student.teacher_weights import TeacherWeights


def _job(**distillation: object):
    return parse_job(
        {
            "apiVersion": "kubedistill.io/v1alpha1",
            "kind": "DistillationJob",
            "metadata": {"name": "teacher-weights"},
            "spec": {
                "mode": "selfDistillation",
                "student": {"model": "/models/student"},
                "data": {"train": {"path": "/data/train.jsonl"}},
                "distillation": distillation,
            },
        }
    )


def _student() -> torch.nn.Linear:
    layer = torch.nn.Linear(2, 2, bias=False)
    torch.nn.init.ones_(layer.weight)
    return layer


def test_a_teacher_copied_after_every_step_keeps_no_copy_of_its_own() -> None:
    student = _student()
    teacher = TeacherWeights(_job(), student)
    assert teacher.tensors == {}
    assert torch.equal(teacher.of("weight", student.weight), student.weight.detach())


def test_an_ema_teacher_moves_toward_the_student_by_one_minus_the_decay() -> None:
    student = _student()
    teacher = TeacherWeights(_job(teacherEmaDecay=0.75), student)
    with torch.no_grad():
        student.weight.fill_(5.0)
    teacher.after_optimizer_step()
    assert teacher.tensors["weight"] == pytest.approx(torch.full((2, 2), 1.0 + 0.25 * 4.0))
    teacher.take_student()
    assert teacher.tensors["weight"][0, 0].item() == pytest.approx(2.0), (
        "an EMA teacher is the average already"
    )


def test_a_teacher_updated_every_few_steps_holds_the_student_of_its_last_copy() -> None:
    student = _student()
    teacher = TeacherWeights(_job(teacherUpdateFreq=3), student)
    with torch.no_grad():
        student.weight.fill_(7.0)
    teacher.after_optimizer_step()
    assert teacher.tensors["weight"][0, 0].item() == 1.0
    teacher.take_student()
    assert teacher.tensors["weight"][0, 0].item() == 7.0
