import pytest
import torch
from torch import Tensor

from kubedistill.api.registry import known_losses
from kubedistill.runtime.losses import KDConfig, fused_kd_loss, get_loss, register_loss, teacher_top, uld
from kubedistill.runtime.losses import divergences as builtin
from tests.runtime.losses.problems import make_problem, reference_from_hidden


@pytest.mark.parametrize(
    ("name", "divergence"),
    [
        ("fkl", builtin.forward_kl),
        ("rkl", builtin.reverse_kl),
        ("jsd", builtin.generalized_jsd),
        ("tvd", builtin.total_variation),
        ("skl", builtin.skewed_kl),
        ("srkl", builtin.skewed_reverse_kl),
        ("akl", builtin.adaptive_kl),
        ("top1Ce", teacher_top.top1_cross_entropy),
        ("hrl", teacher_top.hierarchical_ranking),
        ("uld", uld.universal_logit_distillation),
    ],
)
def test_builtin_names_resolve_through_entry_points(name: str, divergence: object) -> None:
    assert get_loss(name) is divergence


def test_unknown_name_is_rejected_listing_the_known_ones() -> None:
    with pytest.raises(LookupError, match="unknown loss 'kullback'") as error:
        get_loss("kullback")
    assert known_losses()
    for name in known_losses():
        assert name in str(error.value)


@register_loss("testSquaredProbabilityGap")
def squared_probability_gap(student_logits: Tensor, teacher_logits: Tensor, config: KDConfig) -> Tensor:
    return (student_logits.softmax(dim=-1) - teacher_logits.softmax(dim=-1)).square().sum(dim=-1)


def test_registered_plugin_is_known_to_the_api_and_resolved_by_name() -> None:
    assert "testSquaredProbabilityGap" in known_losses()
    assert get_loss("testSquaredProbabilityGap") is squared_probability_gap


def test_registered_plugin_drives_the_fused_loss_like_the_reference() -> None:
    problem = make_problem()
    config = KDConfig(loss="testSquaredProbabilityGap", kd_ratio=0.8, temperature=2.0, chunk_size=5)
    expected, expected_grad_hidden, expected_grad_weight = problem.run(reference_from_hidden, config)
    actual, grad_hidden, grad_weight = problem.run(fused_kd_loss, config)

    assert actual.kd_sum.item() > 0
    torch.testing.assert_close(actual.loss, expected.loss)
    torch.testing.assert_close(grad_hidden, expected_grad_hidden)
    torch.testing.assert_close(grad_weight, expected_grad_weight)
