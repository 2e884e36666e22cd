"""spec.student.attention reaches every model a job runs with transformers: the student, the teacher and the
rollout engines (SGLang's mapping is tested with its engine arguments)."""

import torch

from kubedistill.api import parse_job
from kubedistill.api.spec import Attention
from kubedistill.runtime.engines.layout import single_node_placement
from kubedistill.runtime.models.loading import load_causal_lm
from kubedistill.runtime.rollout.actor import build_rollout
from kubedistill.runtime.teacher.actor import build_teacher
from tests.runtime.conftest import ON_POLICY, TinyWorld, job_manifest


def test_a_model_computes_with_the_kernel_asked_and_the_same_logits(tiny: TinyWorld) -> None:
    eager = load_causal_lm(str(tiny.teacher), attention=Attention.EAGER).eval()
    sdpa = load_causal_lm(str(tiny.teacher)).eval()
    assert (eager.config._attn_implementation, sdpa.config._attn_implementation) == ("eager", "sdpa")
    tokens = torch.tensor([[5, 9, 14, 3, 22]])
    torch.testing.assert_close(eager(tokens).logits, sdpa(tokens).logits, rtol=1e-5, atol=1e-5)


def test_the_transformers_teacher_and_rollout_engines_take_the_students_kernel(tiny: TinyWorld) -> None:
    job = parse_job(job_manifest(tiny, "eager", student={"attention": "eager"}, **ON_POLICY))
    teacher_spec = job.spec.teacher
    assert teacher_spec is not None and teacher_spec.model is not None
    cpu = single_node_placement("cpu")
    teacher = build_teacher(
        teacher_spec,
        teacher_spec.model,
        job.spec.training.precision,
        colocate=False,
        placement=cpu,
        attention=job.spec.student.attention,
    )
    rollout = build_rollout(job, cpu)
    for engine in (teacher, rollout):
        assert engine._model.config._attn_implementation == "eager"  # type: ignore[attr-defined]
