"""The frozen reference of DPO and GRPO on a student rank: the student's trainable parameters as they
started, kept sharded, and swapped into the FSDP2 module to score a micro-batch, the trained values back
after. What it scores is the initial model's log-probability of each label, exactly; what trains afterwards
is the trained model, even when FSDP2 keeps weights gathered through a step (one rank)."""

from collections.abc import Iterator

import pytest
import torch
import torch.distributed as dist
from torch.distributed.fsdp import FSDPModule

from kubedistill.runtime.algorithms.base import AlgorithmContext
from kubedistill.runtime.algorithms.vanilla import VanillaKD
from kubedistill.runtime.data.sample import Sample
from kubedistill.runtime.losses.config import KDConfig
from kubedistill.runtime.models.loading import load_causal_lm
from kubedistill.runtime.student.batch import MicroBatch
from kubedistill.runtime.student.module import DistillationModule
from kubedistill.runtime.student.parallelize import apply_fsdp, device_mesh
from kubedistill.runtime.student.reference import ReferenceWeights
from tests.runtime.conftest import TinyWorld


@pytest.fixture
def one_rank() -> Iterator[None]:
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def plain_scores(model: torch.nn.Module, sample: Sample) -> torch.Tensor:
    """The model's log-probability of each target, the plain way: full logits, log-softmax, gather."""
    ids = torch.tensor(sample.input_ids, dtype=torch.long).unsqueeze(0)
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].float()
    positions = torch.tensor(sample.loss_positions())
    labels = torch.tensor(sample.labels())
    return logits[positions].log_softmax(-1).gather(1, labels.unsqueeze(1)).squeeze(1)


def test_the_reference_scores_the_initial_student_and_training_sees_the_trained_one(
    tiny: TinyWorld, one_rank: None
) -> None:
    student = load_causal_lm(str(tiny.student))
    initial = load_causal_lm(str(tiny.student))
    context = AlgorithmContext(KDConfig(kd_ratio=0.0), int(student.config.hidden_size), None)
    module = DistillationModule(student, VanillaKD(context), None, unsharded_through_step=True)
    # Weights kept gathered between forwards (one rank, reshardAfterForward never): the case where a
    # swap that did not reshard would score or train with the other weights.
    apply_fsdp(
        module,
        student,
        device_mesh("cpu", 1, -1),
        param_dtype=torch.float32,
        cpu_offload=False,
        unsharded=True,
    )
    reference = ReferenceWeights(student, keeps=True)
    sample = Sample(
        input_ids=(5, 9, 14, 3, 7, 11, 2), target_mask=(False,) * 3 + (True,) * 4, source="t", prompt_length=3
    )
    batch = MicroBatch.from_samples([sample], pad_id=0)
    module(batch, None, 1.0)  # a step's forward gathers the weights
    for part in module.modules():
        if isinstance(part, FSDPModule):
            part.reshard()  # as the step's last backward does, before the optimizer updates the shards
    with torch.no_grad():
        for parameter in student.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))  # what an optimizer step does, in place
    module(batch, None, 1.0)  # and the next step's first forward gathers the new weights

    with reference.swapped(module):
        scored = module(batch, None, 1.0, score_labels=True).label_logprobs
    trained = module(batch, None, 1.0, score_labels=True).label_logprobs

    assert scored is not None and trained is not None
    torch.testing.assert_close(scored, plain_scores(initial, sample), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(trained, scored, atol=1e-3), "after the swap the student's own weights are back"


def test_only_trainable_parameters_are_kept_and_nothing_without_a_reference() -> None:
    layer = torch.nn.Linear(2, 2)
    layer.bias.requires_grad_(False)
    assert set(ReferenceWeights(layer, keeps=True).tensors) == {"weight"}
    assert ReferenceWeights(layer, keeps=False).tensors == {}
