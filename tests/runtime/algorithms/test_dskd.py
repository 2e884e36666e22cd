"""DSKD: KD in both hidden spaces through learned projectors, with one tokenizer or two (eta, cma), and with
KDFlow's pseudo-inverse projectors."""

import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from kubedistill.runtime.algorithms.dskd import DualSpaceKD, fitted_rows
from kubedistill.runtime.data.alignment import shared_vocabulary
from kubedistill.runtime.losses.config import KDConfig
from kubedistill.runtime.losses.registry import get_loss
from kubedistill.runtime.student.batch import MicroBatch
from tests.runtime.algorithms.conftest import (
    STUDENT_WIDTH,
    TEACHER_WIDTH,
    Batch,
    Tokenizers,
    context,
    random_batch,
    samples,
)
from tests.runtime.conftest import TinyWorld

CONFIG = KDConfig(loss="fkl", temperature=1.5, kd_ratio=0.6, chunk_size=5)


def algorithm(
    tokenizers: Tokenizers, align: str, config: KDConfig = CONFIG, same: bool = False
) -> DualSpaceKD:
    torch.manual_seed(0)
    return DualSpaceKD(context(tokenizers, config, same=same, dskdTokenAlign=align)).double()


def gradients(dskd: DualSpaceKD, batch: Batch) -> dict[str, torch.Tensor]:
    """The loss and the gradient of every trained tensor."""
    inputs = batch.inputs(dskd.micro_batch_extras(batch.samples))
    dskd.zero_grad(set_to_none=True)
    output = dskd(inputs)
    output.loss.backward()
    found = {"loss": output.loss.detach(), "kd_sum": output.kd_sum}
    found |= {"student_hidden": inputs.student_hidden.grad, "student_head": inputs.student_head.grad}
    return found | {name: p.grad for name, p in dskd.named_parameters()}


def pairs(batch: Batch, exactly: bool) -> tuple[list[int], list[int]]:
    student, teacher, offset, teacher_offset = [], [], 0, 0
    for sample in batch.samples:
        student += [offset + i for i, _ in sample.aligned_targets(exactly)]
        teacher += [teacher_offset + j for _, j in sample.aligned_targets(exactly)]
        offset += sample.num_targets
        teacher_offset += len(sample.teacher_loss_positions())
    return student, teacher


def divergence(student: torch.Tensor, teacher: torch.Tensor, config: KDConfig) -> torch.Tensor:
    return get_loss(config.loss)(student / config.temperature, teacher / config.temperature, config).sum()


def backward_and_gradients(
    dskd: DualSpaceKD,
    batch: Batch,
    config: KDConfig,
    logits: torch.Tensor,
    kd: torch.Tensor,
    hidden: torch.Tensor,
    head: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """A reference's last part: the kd loss mixed with cross-entropy as the job mixes them, and gradients."""
    ce = F.cross_entropy(logits, batch.micro_batch.labels, reduction="sum")
    loss = ((1 - config.kd_ratio) * ce + config.kd_ratio * kd) / batch.normalizer
    loss.backward()
    found = {
        "loss": loss.detach(),
        "kd_sum": kd.detach(),
        "student_hidden": hidden.grad,
        "student_head": head.grad,
    }
    return found | {name: p.grad for name, p in dskd.named_parameters()}


Rows = tuple[torch.Tensor, torch.Tensor]
"""R as rows of the student's head and of the teacher's (pseudoInverse)."""


def kdflow_t2s(head: torch.Tensor, teacher_head: torch.Tensor, rows: Rows) -> torch.Tensor:
    """KDFlow's initial t2s weight, its heads being [hidden x vocab] (kdflow/algorithms/dskd.py @ 3a7a21a:
    110-111, 135-137): init_t2s = (part_teacher_head @ pinv(part_student_head))^T."""
    part_student_head, part_teacher_head = head.detach().T[:, rows[0]], teacher_head.T[:, rows[1]]
    return (part_teacher_head @ torch.linalg.pinv(part_student_head)).T


def kdflow_s2t(head: torch.Tensor, teacher_head: torch.Tensor, rows: Rows) -> torch.Tensor:
    """KDFlow's s2t [d_s x d_t], applied as hidden @ s2t (dskd.py:140, 276-281): the student's head part
    (detached) @ pinv(part_teacher_head)."""
    return head.detach().T[:, rows[0]] @ torch.linalg.pinv(teacher_head.T[:, rows[1]])


def in_teacher_space(
    dskd: DualSpaceKD, hidden: torch.Tensor, head: torch.Tensor, teacher_head: torch.Tensor, rows: Rows | None
) -> torch.Tensor:
    return dskd.s2t(hidden) if rows is None else hidden @ kdflow_s2t(head, teacher_head, rows)


def reference(
    dskd: DualSpaceKD, batch: Batch, config: KDConfig, rows: Rows | None = None
) -> dict[str, torch.Tensor]:
    """The paper's loss over full float64 logits with exact alignment, and its gradients; with `rows`, the
    student-to-teacher projector is KDFlow's pseudo-inverse one."""
    hidden = batch.student_hidden.detach().clone().requires_grad_()
    head = batch.student_head.detach().clone().requires_grad_()
    teacher_hidden, teacher_head = batch.teacher_hidden, batch.teacher_head
    labels = batch.micro_batch.labels
    student, teacher = pairs(batch, exactly=True)
    dskd.zero_grad(set_to_none=True)
    logits = hidden @ head.T
    teacher_in_student = dskd.t2s(teacher_hidden[teacher]) @ head.detach().T
    student_in_teacher = in_teacher_space(dskd, hidden[student], head, teacher_head, rows) @ teacher_head.T
    kd = (
        F.cross_entropy(teacher_in_student, labels[student], reduction="sum")
        + divergence(logits[student], teacher_in_student.detach(), config)
        + divergence(student_in_teacher, teacher_hidden[teacher] @ teacher_head.T, config)
    )
    return backward_and_gradients(dskd, batch, config, logits, kd, hidden, head)


@pytest.mark.parametrize("align", ["eta", "cma"])
def test_with_one_tokenizer_every_position_pairs_with_itself(
    tiny: TinyWorld, tokenizers: Tokenizers, align: str
) -> None:
    student = tokenizers.student
    batch = random_batch(samples(tiny, student, student), len(student), len(student))
    dskd = algorithm(tokenizers, align, same=True)
    ours, expected = gradients(dskd, batch), reference(dskd, batch, CONFIG)
    assert pairs(batch, exactly=True)[0] == list(range(batch.micro_batch.num_targets))
    for name in ("loss", "kd_sum", "student_hidden", "student_head", "t2s.weight", "s2t.weight"):
        torch.testing.assert_close(ours[name], expected[name], rtol=0, atol=1e-10, msg=name)


@pytest.mark.parametrize("finer_teacher", [False, True], ids=["coarser-teacher", "finer-teacher"])
@pytest.mark.parametrize("loss", ["fkl", "rkl", "jsd", "akl"])
def test_exact_token_alignment_distils_only_identical_pieces(
    tiny: TinyWorld, tokenizers: Tokenizers, loss: str, finer_teacher: bool
) -> None:
    tokenizers = tokenizers.swapped() if finer_teacher else tokenizers
    batch = random_batch(
        samples(tiny, tokenizers.student, tokenizers.teacher),
        len(tokenizers.student),
        len(tokenizers.teacher),
    )
    config = replace(CONFIG, loss=loss)
    dskd = algorithm(tokenizers, "eta", config)
    ours, expected = gradients(dskd, batch), reference(dskd, batch, config)
    assert 0 < len(pairs(batch, exactly=True)[0]) < batch.micro_batch.num_targets
    for name in ("loss", "kd_sum", "student_hidden", "student_head", "t2s.weight", "s2t.weight"):
        torch.testing.assert_close(ours[name], expected[name], rtol=0, atol=1e-10, msg=name)


def cma_reference(
    dskd: DualSpaceKD, batch: Batch, config: KDConfig, rows: Rows | None = None
) -> dict[str, torch.Tensor]:
    """Cross-model attention written over the whole micro-batch, other samples masked out."""
    hidden = batch.student_hidden.detach().clone().requires_grad_()
    head = batch.student_head.detach().clone().requires_grad_()
    teacher_hidden, teacher_head = batch.teacher_hidden, batch.teacher_head
    extras = dskd.micro_batch_extras(batch.samples)
    labels = batch.micro_batch.labels
    teacher_labels = extras["teacher_labels"]
    dskd.zero_grad(set_to_none=True)

    def std(x: torch.Tensor) -> torch.Tensor:
        return x / x.std()

    embeddings = head.detach()
    query = dskd.query(torch.cat([embeddings[extras["student_inputs"]], embeddings[labels]], -1))
    key = std(torch.cat([teacher_head[extras["teacher_inputs"]], teacher_head[teacher_labels]], -1))
    value = dskd.t2s(std(teacher_hidden) + std(teacher_head[teacher_labels]))
    student_rows = torch.repeat_interleave(extras["student_counts"])
    teacher_rows = torch.repeat_interleave(extras["teacher_counts"])
    same_sample = student_rows[:, None] == teacher_rows[None, :]
    scores = (query @ key.T / math.sqrt(2 * TEACHER_WIDTH)).masked_fill(~same_sample, -math.inf)
    teacher_in_student = (scores.softmax(-1) @ value) @ head.detach().T
    student_values = in_teacher_space(dskd, hidden, head, teacher_head, rows)
    student_in_teacher = (scores.T.softmax(-1) @ student_values) @ teacher_head.T
    logits = hidden @ head.T
    correct = teacher_in_student.argmax(-1) == labels
    kd = (
        F.cross_entropy(teacher_in_student, labels, reduction="sum")
        + divergence(logits[correct], teacher_in_student.detach()[correct], config)
        + divergence(student_in_teacher, teacher_hidden @ teacher_head.T, config)
    )
    found = backward_and_gradients(dskd, batch, config, logits, kd, hidden, head)
    return found | {"imitated": correct.sum()}


def test_cross_model_attention_mixes_the_teacher_states_of_the_same_sample(
    tiny: TinyWorld, tokenizers: Tokenizers
) -> None:
    batch = random_batch(
        samples(tiny, tokenizers.student, tokenizers.teacher),
        len(tokenizers.student),
        len(tokenizers.teacher),
    )
    dskd = algorithm(tokenizers, "cma")
    ours, expected = gradients(dskd, batch), cma_reference(dskd, batch, CONFIG)
    for name in (
        "loss",
        "kd_sum",
        "student_hidden",
        "student_head",
        "t2s.weight",
        "s2t.weight",
        "query.weight",
    ):
        torch.testing.assert_close(ours[name], expected[name], rtol=0, atol=1e-10, msg=name)


def test_trained_projectors_predict_targets_and_the_student_imitates_them_there(
    tiny: TinyWorld, tokenizers: Tokenizers
) -> None:
    """The projected teacher's CE trains the projectors alone; where they come to predict the target, the
    student starts imitating the projected distribution (and nowhere else)."""
    batch = random_batch(
        samples(tiny, tokenizers.student, tokenizers.teacher),
        len(tokenizers.student),
        len(tokenizers.teacher),
    )
    dskd = algorithm(tokenizers, "cma")
    assert int(cma_reference(dskd, batch, CONFIG)["imitated"]) == 0, "random projectors predict nothing"
    optimizer = torch.optim.Adam(dskd.parameters(), lr=0.05)
    for _ in range(20):
        optimizer.zero_grad()
        dskd(batch.inputs(dskd.micro_batch_extras(batch.samples))).loss.backward()
        optimizer.step()
    expected = cma_reference(dskd, batch, CONFIG)
    assert 0 < int(expected["imitated"]) < batch.micro_batch.num_targets
    ours = gradients(dskd, batch)
    for name in ("loss", "student_hidden", "student_head"):
        torch.testing.assert_close(ours[name], expected[name], rtol=0, atol=1e-10, msg=name)


@pytest.mark.parametrize("align", ["eta", "cma"])
def test_gradients_reach_the_student_and_every_projector(
    tiny: TinyWorld, tokenizers: Tokenizers, align: str
) -> None:
    batch = random_batch(
        samples(tiny, tokenizers.student, tokenizers.teacher),
        len(tokenizers.student),
        len(tokenizers.teacher),
    )
    found = gradients(algorithm(tokenizers, align), batch)
    trained = ["student_hidden", "student_head", "t2s.weight", "s2t.weight"] + (
        ["query.weight"] if align == "cma" else []
    )
    for name in trained:
        assert found[name] is not None and found[name].abs().sum() > 0, name
    assert found["kd_sum"] > 0


@pytest.mark.parametrize(
    ("align", "shapes"),
    [
        pytest.param(
            "eta",
            {"t2s.weight": (STUDENT_WIDTH, TEACHER_WIDTH), "s2t.weight": (TEACHER_WIDTH, STUDENT_WIDTH)},
            id="eta",
        ),
        pytest.param(
            "cma",
            {
                "t2s.weight": (STUDENT_WIDTH, TEACHER_WIDTH),
                "s2t.weight": (TEACHER_WIDTH, STUDENT_WIDTH),
                "query.weight": (2 * TEACHER_WIDTH, 2 * STUDENT_WIDTH),
            },
            id="cma",
        ),
    ],
)
def test_the_projectors_map_between_the_hidden_spaces(
    tokenizers: Tokenizers, align: str, shapes: dict
) -> None:
    assert {name: tuple(p.shape) for name, p in algorithm(tokenizers, align).named_parameters()} == shapes


@pytest.mark.parametrize("align", ["eta", "cma"])
def test_a_placeholder_micro_batch_still_reaches_every_projector(tokenizers: Tokenizers, align: str) -> None:
    """A rank with nothing to train on runs the same FSDP2 reduce-scatters as the others."""
    empty = Batch(
        samples=[],
        micro_batch=MicroBatch.from_samples([], pad_id=0),
        student_hidden=torch.zeros(0, STUDENT_WIDTH, dtype=torch.float64),
        student_head=torch.randn(320, STUDENT_WIDTH, dtype=torch.float64),
        teacher_hidden=torch.zeros(0, TEACHER_WIDTH, dtype=torch.float64),
        teacher_head=torch.randn(400, TEACHER_WIDTH, dtype=torch.float64),
    )
    dskd = algorithm(tokenizers, align)
    output = dskd(replace(empty.inputs({}), teacher_hidden=None))
    output.loss.backward()
    assert output.loss.item() == 0.0
    assert all(p.grad is not None and not p.grad.any() for p in dskd.parameters())


def pseudo_inverse(
    tokenizers: Tokenizers, batch: Batch, align: str, topk: int | None, same: bool = False
) -> tuple[DualSpaceKD, Rows]:
    """DSKD with pseudoInverse projectors, initialised from the batch's heads, and its R."""
    torch.manual_seed(0)
    distillation = {"dskdTokenAlign": align, "dskdProjectorInit": "pseudoInverse", "topkVocab": topk}
    dskd = DualSpaceKD(context(tokenizers, CONFIG, same=same, **distillation)).double()
    dskd.initialise(batch.student_head, batch.teacher_head)
    teacher = tokenizers.student if same else tokenizers.teacher
    shape = (batch.student_head.shape[0], batch.teacher_head.shape[0])
    return dskd, fitted_rows(tokenizers.student, teacher, shape, topk)


def cross_batch(tiny: TinyWorld, tokenizers: Tokenizers) -> Batch:
    student, teacher = tokenizers.student, tokenizers.teacher
    return random_batch(samples(tiny, student, teacher), len(student), len(teacher))


@pytest.mark.parametrize("topk", [None, 6])
@pytest.mark.parametrize("same", [True, False], ids=["one-tokenizer", "two-tokenizers"])
def test_pseudo_inverse_projectors_are_kdflows_over_the_first_shared_tokens(
    tiny: TinyWorld, tokenizers: Tokenizers, same: bool, topk: int | None
) -> None:
    if same:
        student = tokenizers.student
        batch = random_batch(samples(tiny, student, student), len(student), len(student))
        shared = list(range(len(student)))
        expected_rows = (shared, shared)
    else:
        batch = cross_batch(tiny, tokenizers)
        vocabulary = shared_vocabulary(tokenizers.student, tokenizers.teacher)
        expected_rows = (list(vocabulary.student_ids), list(vocabulary.teacher_ids))
        assert 6 < len(vocabulary) < len(tokenizers.teacher), "some pieces shared, not all"
    dskd, rows = pseudo_inverse(tokenizers, batch, "eta", topk, same=same)
    assert [r.tolist() for r in rows] == [ids[:topk] for ids in expected_rows]
    assert dskd.s2t is None and [name for name, _ in dskd.named_parameters()] == ["t2s.weight"]
    assert dskd.t2s is not None
    head, teacher_head = batch.student_head, batch.teacher_head
    torch.testing.assert_close(dskd.t2s.weight, kdflow_t2s(head, teacher_head, rows), rtol=0, atol=1e-10)
    assert dskd.teacher_pinv is not None and dskd.student_rows is not None
    ours = (dskd.teacher_pinv @ head[dskd.student_rows]).T
    torch.testing.assert_close(ours, kdflow_s2t(head, teacher_head, rows), rtol=0, atol=1e-10)


def test_pseudo_inverse_over_fewer_tokens_than_the_student_width_gives_the_teachers_logits_there(
    tiny: TinyWorld, tokenizers: Tokenizers
) -> None:
    batch = cross_batch(tiny, tokenizers)
    for topk, exact in ((STUDENT_WIDTH - 2, True), (None, False)):
        dskd, (student_rows, teacher_rows) = pseudo_inverse(tokenizers, batch, "eta", topk)
        assert dskd.t2s is not None
        teacher_in_student = dskd.t2s(batch.teacher_hidden) @ batch.student_head[student_rows].T
        teacher_logits = batch.teacher_hidden @ batch.teacher_head[teacher_rows].T
        assert torch.allclose(teacher_in_student, teacher_logits, rtol=0, atol=1e-10) == exact, topk


@pytest.mark.parametrize("align", ["eta", "cma"])
def test_pseudo_inverse_losses_and_gradients_match_the_float64_reference(
    tiny: TinyWorld, tokenizers: Tokenizers, align: str
) -> None:
    batch = cross_batch(tiny, tokenizers)
    dskd, rows = pseudo_inverse(tokenizers, batch, align, topk=40)
    check = reference if align == "eta" else cma_reference
    ours, expected = gradients(dskd, batch), check(dskd, batch, CONFIG, rows)
    names = ["loss", "kd_sum", "student_hidden", "student_head", "t2s.weight"]
    for name in names + (["query.weight"] if align == "cma" else []):
        torch.testing.assert_close(ours[name], expected[name], rtol=0, atol=1e-10, msg=name)
