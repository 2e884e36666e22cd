"""The module FSDP2 wraps: the loss inside forward, and placeholder micro-batches of short ranks."""

import torch

from kubedistill.runtime.algorithms.base import AlgorithmContext
from kubedistill.runtime.algorithms.vanilla import VanillaKD
from kubedistill.runtime.data.sample import Sample
from kubedistill.runtime.losses.config import KDConfig
from kubedistill.runtime.models.loading import load_causal_lm, load_lm_head_weight
from kubedistill.runtime.student.batch import MicroBatch
from kubedistill.runtime.student.module import DistillationModule
from tests.runtime.conftest import TinyWorld


def _module(tiny: TinyWorld) -> DistillationModule:
    student = load_causal_lm(str(tiny.student))
    head = load_lm_head_weight(str(tiny.teacher))
    context = AlgorithmContext(KDConfig(kd_ratio=0.5), int(student.config.hidden_size), int(head.shape[1]))
    return DistillationModule(student, VanillaKD(context), head, unsharded_through_step=True)


def test_a_placeholder_micro_batch_has_zero_loss_yet_reaches_every_parameter(tiny: TinyWorld) -> None:
    """A rank with fewer micro-batches than its peers runs a placeholder with no teacher output: its
    backward must still touch every parameter, or that rank's FSDP2 reduce-scatters would not match."""
    module = _module(tiny)
    output = module(MicroBatch.from_samples([], pad_id=0), None, normalizer=10.0)
    assert output.loss.loss.item() == 0.0
    output.loss.loss.backward()
    assert all(p.grad is not None for p in module.parameters() if p.requires_grad)


def test_the_loss_of_a_real_micro_batch_uses_the_teacher(tiny: TinyWorld) -> None:
    module = _module(tiny)
    sample = Sample(
        input_ids=(5, 6, 7, 8), target_mask=(False, False, True, True), source="t", prompt_length=2
    )
    batch = MicroBatch.from_samples([sample], pad_id=0)
    teacher_hidden = torch.randn(2, module.teacher_head.shape[1])
    with_teacher = module(batch, teacher_hidden, normalizer=2.0).loss
    assert with_teacher.num_tokens == 2
    assert with_teacher.kd_sum.item() > 0
