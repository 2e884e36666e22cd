from dataclasses import replace

import pytest
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.distributed.fsdp import fully_shard

from kubedistill.runtime.losses import IGNORE_INDEX, KDConfig, LossOutput, fused_kd_loss, reference_kd_loss
from tests.runtime.losses.problems import LOSSES, Problem, make_problem, reference_from_hidden

TOLERANCE = {"rtol": 1e-6, "atol": 1e-9}


def assert_same(problem: Problem, config: KDConfig) -> None:
    expected, expected_grad_hidden, expected_grad_weight = problem.run(reference_from_hidden, config)
    actual, grad_hidden, grad_weight = problem.run(fused_kd_loss, config)
    torch.testing.assert_close(actual.loss, expected.loss, **TOLERANCE)
    torch.testing.assert_close(actual.kd_sum, expected.kd_sum, **TOLERANCE)
    torch.testing.assert_close(actual.ce_sum, expected.ce_sum, **TOLERANCE)
    assert actual.num_tokens == expected.num_tokens
    if expected.kd_per_position is None:
        assert actual.kd_per_position is None
    else:
        assert actual.kd_per_position is not None
        torch.testing.assert_close(actual.kd_per_position, expected.kd_per_position, **TOLERANCE)
    torch.testing.assert_close(grad_hidden, expected_grad_hidden, **TOLERANCE)
    torch.testing.assert_close(grad_weight, expected_grad_weight, **TOLERANCE)


@pytest.mark.parametrize("kd_ratio", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
@pytest.mark.parametrize("loss", LOSSES)
def test_fused_equals_reference_in_value_and_gradients(
    loss: str, temperature: float, kd_ratio: float
) -> None:
    config = KDConfig(loss=loss, temperature=temperature, kd_ratio=kd_ratio, chunk_size=8)
    assert_same(make_problem(), config)


@pytest.mark.parametrize("chunk_size", [1, 5, 27, 28, 1000])
def test_any_chunk_size_gives_the_reference_result(chunk_size: int) -> None:
    # 37 tokens with every fourth ignored leave 27 to compute.
    assert_same(make_problem(), KDConfig(loss="jsd", kd_ratio=0.5, chunk_size=chunk_size))


@pytest.mark.parametrize(
    ("student_vocab", "teacher_vocab"),
    [(50, 45), (45, 50), (48, 48)],
    ids=["wider-student", "wider-teacher", "same"],
)
@pytest.mark.parametrize("loss", ["fkl", "rkl", "akl"])
def test_vocabularies_of_different_sizes_give_the_reference_result(
    loss: str, student_vocab: int, teacher_vocab: int
) -> None:
    problem = make_problem(student_vocab=student_vocab, teacher_vocab=teacher_vocab)
    assert_same(problem, KDConfig(loss=loss, kd_ratio=0.7, temperature=2.0, chunk_size=6))


def test_without_a_teacher_it_is_the_reference_cross_entropy() -> None:
    problem = replace(make_problem(), teacher_hidden=None, teacher_weight=None)
    assert_same(problem, KDConfig(kd_ratio=0.5, chunk_size=4))


def test_all_positions_ignored_give_zero_loss_and_zero_gradients() -> None:
    problem = make_problem()
    labels = torch.full_like(problem.labels, IGNORE_INDEX)
    hidden = problem.student_hidden.clone().requires_grad_()
    weight = problem.student_weight.clone().requires_grad_()
    out = fused_kd_loss(
        hidden, weight, problem.teacher_hidden, problem.teacher_weight, labels, KDConfig(), 1.0
    )
    grad_hidden, grad_weight = torch.autograd.grad(out.loss, [hidden, weight])
    assert out.loss.item() == 0.0
    assert out.num_tokens == 0
    assert not grad_hidden.any()
    assert not grad_weight.any()


def test_upstream_gradient_scales_both_gradients() -> None:
    problem = make_problem()
    config = KDConfig(loss="skl", chunk_size=8)
    _, grad_hidden, grad_weight = problem.run(fused_kd_loss, config)
    leaves = problem.fresh()
    out = fused_kd_loss(
        leaves.student_hidden,
        leaves.student_weight,
        problem.teacher_hidden,
        problem.teacher_weight,
        problem.labels,
        config,
        problem.normalizer,
    )
    scaled_hidden, scaled_weight = torch.autograd.grad(
        3.0 * out.loss, [leaves.student_hidden, leaves.student_weight]
    )
    torch.testing.assert_close(scaled_hidden, 3.0 * grad_hidden)
    torch.testing.assert_close(scaled_weight, 3.0 * grad_weight)


class TiedStudent(nn.Module):
    """Embedding and lm_head share one matrix, as in small Qwen3 models."""

    def __init__(self, vocab: int, dim: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.block = nn.Linear(dim, dim)

    def hidden(self, ids: Tensor) -> Tensor:
        return torch.tanh(self.block(self.embed(ids)))


def test_weight_tied_to_the_embeddings_gets_both_gradients() -> None:
    torch.manual_seed(0)
    fused_model = TiedStudent(40, 8).double()
    reference_model = TiedStudent(40, 8).double()
    reference_model.load_state_dict(fused_model.state_dict())
    problem = make_problem(tokens=30, teacher_vocab=36, teacher_dim=6, student_vocab=40)
    ids = torch.randint(0, 40, (30,))
    config = KDConfig(loss="tvd", kd_ratio=0.6, temperature=2.0, chunk_size=7)

    fused = fused_kd_loss(
        fused_model.hidden(ids),
        fused_model.embed.weight,
        problem.teacher_hidden,
        problem.teacher_weight,
        problem.labels,
        config,
        problem.normalizer,
    )
    fused.loss.backward()
    reference = reference_kd_loss(
        reference_model.hidden(ids) @ reference_model.embed.weight.T,
        problem.teacher_hidden @ problem.teacher_weight.T,
        problem.labels,
        config,
        problem.normalizer,
    )
    reference.loss.backward()

    for (name, fused_param), reference_param in zip(
        fused_model.named_parameters(), reference_model.parameters(), strict=True
    ):
        assert fused_param.grad is not None, name
        torch.testing.assert_close(fused_param.grad, reference_param.grad, **TOLERANCE, msg=name)


def test_bfloat16_inputs_stay_close_to_the_float64_result() -> None:
    problem = make_problem(tokens=64, student_vocab=300, teacher_vocab=290, student_dim=32, teacher_dim=24)
    config = KDConfig(loss="fkl", kd_ratio=0.5, chunk_size=16)
    expected, expected_grad_hidden, expected_grad_weight = problem.run(reference_from_hidden, config)
    low = Problem(
        *(
            tensor.to(torch.bfloat16) if tensor.is_floating_point() else tensor
            for tensor in vars(problem).values()
        )
    )
    actual, grad_hidden, grad_weight = low.run(fused_kd_loss, config)

    assert actual.loss.dtype == torch.float32
    assert grad_weight.dtype == torch.bfloat16
    torch.testing.assert_close(actual.loss.double(), expected.loss, rtol=2e-2, atol=1e-3)
    torch.testing.assert_close(grad_hidden.double(), expected_grad_hidden, rtol=5e-2, atol=5e-4)
    torch.testing.assert_close(grad_weight.double(), expected_grad_weight, rtol=5e-2, atol=5e-4)


class FusedHead(nn.Module):
    """A student whose loss is computed inside its forward, where FSDP2 has unsharded the lm_head."""

    def __init__(self, vocab: int, dim: int) -> None:
        super().__init__()
        self.block = nn.Linear(dim, dim)
        self.lm_head = nn.Linear(dim, vocab, bias=False)

    def forward(
        self, x: Tensor, teacher_hidden: Tensor, teacher_weight: Tensor, labels: Tensor, config: KDConfig
    ) -> LossOutput:
        return fused_kd_loss(
            torch.tanh(self.block(x)),
            self.lm_head.weight,
            teacher_hidden,
            teacher_weight,
            labels,
            config,
            40.0,
        )


@pytest.fixture
def single_rank_process_group() -> object:
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield
    dist.destroy_process_group()


@pytest.mark.usefixtures("single_rank_process_group")
def test_lm_head_unsharded_by_fsdp2_gets_the_reference_gradient() -> None:
    torch.manual_seed(0)
    sharded = FusedHead(50, 16).double()
    plain = FusedHead(50, 16).double()
    plain.load_state_dict(sharded.state_dict())
    fully_shard(sharded)
    problem = make_problem()
    config = KDConfig(loss="akl", kd_ratio=0.5, chunk_size=9)

    sharded(
        problem.student_hidden, problem.teacher_hidden, problem.teacher_weight, problem.labels, config
    ).loss.backward()
    reference_kd_loss(
        plain.lm_head(torch.tanh(plain.block(problem.student_hidden))),
        problem.teacher_hidden @ problem.teacher_weight.T,
        problem.labels,
        config,
        40.0,
    ).loss.backward()

    for name, param in sharded.named_parameters():
        expected = plain.get_parameter(name).grad
        torch.testing.assert_close(param.grad.full_tensor(), expected, **TOLERANCE, msg=name)


@pytest.mark.parametrize("kd_ratio", [0.3, 1.0])
def test_fkl_at_temperature_one_over_equal_vocabularies_equals_the_reference(kd_ratio: float) -> None:
    """The case where cross-entropy and fkl share one in-place log_softmax (the spec's default loss)."""
    problem = make_problem(student_vocab=50, teacher_vocab=50)
    assert_same(problem, KDConfig(loss="fkl", temperature=1.0, kd_ratio=kd_ratio, chunk_size=8))
