"""simpleCtkd: KD at positions both tokenisations predict from the same text, over the shared pieces."""

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from kubedistill.api.spec import DataSource, DataSpec, Mode
from kubedistill.runtime.algorithms.simple_ctkd import SimpleCrossTokenizerKD
from kubedistill.runtime.algorithms.vanilla import VanillaKD
from kubedistill.runtime.data.alignment import aligned_groups, shared_vocabulary
from kubedistill.runtime.data.records import Record, read_records
from kubedistill.runtime.data.sample import Sample
from kubedistill.runtime.data.tokenize import SampleBuilder
from kubedistill.runtime.losses.config import KDConfig
from kubedistill.runtime.losses.output import LossOutput
from kubedistill.runtime.losses.registry import get_loss
from kubedistill.runtime.student.batch import MicroBatch
from tests.runtime.algorithms.conftest import Batch, Tokenizers, context, random_batch, samples
from tests.runtime.conftest import TinyWorld

LOSSES = ["fkl", "rkl", "jsd", "tvd", "skl", "srkl", "akl"]


def run(
    algorithm: SimpleCrossTokenizerKD | VanillaKD, batch: Batch
) -> tuple[LossOutput, torch.Tensor, torch.Tensor]:
    """The loss and its gradients with respect to the student's hidden states and head."""
    inputs = batch.inputs(algorithm.micro_batch_extras(batch.samples))
    output = algorithm(inputs)
    output.loss.backward()
    return output, inputs.student_hidden.grad, inputs.student_head.grad


def aligned_by_spans(tiny: TinyWorld, tokenizer, count: int = 6) -> list[Sample]:
    """Samples whose teacher side is the same tokenizer, yet aligned through spans as for another one."""
    source = DataSource(path=str(tiny.train))
    spec = DataSpec(train=source, max_length=64, prompt_max_length=32)
    build = SampleBuilder(source, spec, tokenizer, Mode.OFF_POLICY, tokenizer, cross_tokenizer=True)
    return [build(record) for record in read_records(source) if isinstance(record, Record)][:count]


@pytest.mark.parametrize("through_spans", [False, True], ids=["same-tokens", "aligned-by-spans"])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
@pytest.mark.parametrize("loss", LOSSES)
def test_with_one_tokenizer_it_is_vanilla_kd(
    tiny: TinyWorld, tokenizers: Tokenizers, loss: str, temperature: float, through_spans: bool
) -> None:
    student = tokenizers.student
    built = aligned_by_spans(tiny, student) if through_spans else samples(tiny, student, student)
    assert (built[0].target_spans is not None) == through_spans
    batch = random_batch(built, len(student), len(student))
    config = KDConfig(loss=loss, temperature=temperature, kd_ratio=0.7)
    job = context(tokenizers, config, same=True)
    ours, hidden_grad, head_grad = run(SimpleCrossTokenizerKD(job), batch)
    vanilla, vanilla_hidden_grad, vanilla_head_grad = run(VanillaKD(job), batch)
    torch.testing.assert_close(ours.loss, vanilla.loss, rtol=0, atol=1e-12)
    torch.testing.assert_close(ours.kd_sum, vanilla.kd_sum, rtol=0, atol=1e-10)
    torch.testing.assert_close(ours.ce_sum, vanilla.ce_sum, rtol=0, atol=1e-10)
    torch.testing.assert_close(hidden_grad, vanilla_hidden_grad, rtol=0, atol=1e-12)
    torch.testing.assert_close(head_grad, vanilla_head_grad, rtol=0, atol=1e-12)


def reference(batch: Batch, tokenizers: Tokenizers, config: KDConfig) -> torch.Tensor:
    """The loss written out over full float64 logits: CE everywhere, KD where both sides predict the same
    piece from the same text, over the shared pieces, each distribution renormalised by its softmax over
    them."""
    shared = shared_vocabulary(tokenizers.student, tokenizers.teacher)
    student_logits = batch.student_hidden @ batch.student_head.T
    teacher_logits = batch.teacher_hidden @ batch.teacher_head.T
    labels = batch.micro_batch.labels
    ce = F.cross_entropy(student_logits, labels, reduction="sum")
    rows, teacher_rows, offset, teacher_offset = [], [], 0, 0
    for sample in batch.samples:
        rows += [offset + i for i, _ in sample.aligned_targets(exactly=True)]
        teacher_rows += [teacher_offset + j for _, j in sample.aligned_targets(exactly=True)]
        offset += sample.num_targets
        teacher_offset += len(sample.teacher_loss_positions())
    student = student_logits[rows][:, list(shared.student_ids)] / config.temperature
    teacher = teacher_logits[teacher_rows][:, list(shared.teacher_ids)] / config.temperature
    kd = get_loss(config.loss)(student, teacher, config).sum()
    return ((1 - config.kd_ratio) * ce + config.kd_ratio * kd) / batch.normalizer


@pytest.mark.parametrize("finer_teacher", [False, True], ids=["coarser-teacher", "finer-teacher"])
@pytest.mark.parametrize("loss", LOSSES)
def test_across_tokenizers_it_is_kd_where_both_predict_the_same_piece_over_the_shared_pieces(
    tiny: TinyWorld, tokenizers: Tokenizers, loss: str, finer_teacher: bool
) -> None:
    tokenizers = tokenizers.swapped() if finer_teacher else tokenizers
    built = samples(tiny, tokenizers.student, tokenizers.teacher)
    batch = random_batch(built, len(tokenizers.student), len(tokenizers.teacher))
    config = KDConfig(loss=loss, temperature=1.5, kd_ratio=0.6, chunk_size=7)
    output, _, _ = run(SimpleCrossTokenizerKD(context(tokenizers, config)), batch)
    torch.testing.assert_close(output.loss, reference(batch, tokenizers, config), rtol=0, atol=1e-12)
    assert output.kd_sum > 0


def test_unaligned_positions_train_on_the_cross_entropy_alone(
    tiny: TinyWorld, tokenizers: Tokenizers
) -> None:
    built = samples(tiny, tokenizers.student, tokenizers.teacher)
    batch = random_batch(built, len(tokenizers.student), len(tokenizers.teacher))
    config = KDConfig(kd_ratio=0.6)
    _, mixed, _ = run(SimpleCrossTokenizerKD(context(tokenizers, config)), batch)
    _, ce_only, _ = run(SimpleCrossTokenizerKD(context(tokenizers, replace(config, kd_ratio=0.0))), batch)
    aligned = SimpleCrossTokenizerKD.micro_batch_extras(built)["student_aligned"]
    unaligned = torch.ones(batch.micro_batch.num_targets, dtype=torch.bool)
    unaligned[aligned] = False
    assert 0 < int(unaligned.sum()) < unaligned.numel()
    torch.testing.assert_close(mixed[unaligned], 0.4 * ce_only[unaligned], rtol=0, atol=1e-12)
    assert not torch.allclose(mixed[~unaligned], 0.4 * ce_only[~unaligned])


def test_teacher_positions_without_a_partner_contribute_nothing(
    tiny: TinyWorld, tokenizers: Tokenizers
) -> None:
    tokenizers = tokenizers.swapped()
    built = samples(tiny, tokenizers.student, tokenizers.teacher)
    batch = random_batch(built, len(tokenizers.student), len(tokenizers.teacher))
    algorithm = SimpleCrossTokenizerKD(context(tokenizers, KDConfig()))
    partnered = set(algorithm.micro_batch_extras(built)["teacher_aligned"].tolist())
    alone = [j for j in range(batch.teacher_hidden.shape[0]) if j not in partnered]
    assert alone
    before, _, _ = run(algorithm, batch)
    changed = batch.teacher_hidden.clone()
    changed[alone] += 10.0
    after, _, _ = run(algorithm, replace(batch, teacher_hidden=changed))
    torch.testing.assert_close(after.loss, before.loss, rtol=0, atol=0)
    changed[sorted(partnered)[0]] += 10.0
    moved, _, _ = run(algorithm, replace(batch, teacher_hidden=changed))
    assert moved.loss != before.loss


def test_a_placeholder_micro_batch_has_a_zero_loss(tokenizers: Tokenizers) -> None:
    empty = MicroBatch.from_samples([], pad_id=0)
    batch = Batch(
        [],
        empty,
        torch.zeros(0, 8, dtype=torch.float64),
        torch.randn(320, 8, dtype=torch.float64),
        torch.zeros(0, 12, dtype=torch.float64),
        torch.randn(400, 12, dtype=torch.float64),
    )
    algorithm = SimpleCrossTokenizerKD(context(tokenizers, KDConfig()))
    inputs = replace(batch.inputs({}), teacher_hidden=None)
    assert algorithm(inputs).loss.item() == 0.0


@pytest.mark.parametrize("finer_teacher", [False, True], ids=["coarser-teacher", "finer-teacher"])
def test_with_uld_it_is_golds_hybrid_at_every_aligned_group(
    tiny: TinyWorld, tokenizers: Tokenizers, finer_teacher: bool
) -> None:
    """Over both whole vocabularies, the shared pieces being GOLD's matched ones, at each sample's aligned
    groups merged by TRL's own chain rule (`ULDLoss._merge_probabilities_with_alignment_groups`, "bayesian")
    and compared by its own hybrid (`_compute_hybrid_uld_loss`, a mean over the rows it is given)."""
    from tests.runtime.losses.test_uld import gold, with_matches

    tokenizers = tokenizers.swapped() if finer_teacher else tokenizers
    built = samples(tiny, tokenizers.student, tokenizers.teacher)
    batch = random_batch(built, len(tokenizers.student), len(tokenizers.teacher))
    config = KDConfig(loss="uld", temperature=1.5, kd_ratio=0.6, jsd_beta=0.3, chunk_size=7)
    output, hidden_grad, _ = run(SimpleCrossTokenizerKD(context(tokenizers, config)), batch)

    shared = shared_vocabulary(tokenizers.student, tokenizers.teacher)
    matched = dict(zip(shared.teacher_ids, shared.student_ids, strict=True))
    theirs = with_matches(gold(beta=0.3, hybrid=True, merged=True, temperature=1.5), matched)
    hidden = batch.student_hidden.detach().clone().requires_grad_()
    student_probs = F.softmax(hidden @ batch.student_head.T / 1.5, -1)
    teacher_probs = F.softmax(batch.teacher_hidden @ batch.teacher_head.T / 1.5, -1)
    ce = F.cross_entropy(hidden @ batch.student_head.T, batch.micro_batch.labels, reduction="sum")
    student_merged, teacher_merged, offset, teacher_offset, multi_token = [], [], 0, 0, 0
    for sample in built:
        assert sample.target_spans is not None and sample.teacher_target_spans is not None
        groups = aligned_groups(
            [(start, end) for start, end in sample.target_spans.tolist()],
            [(start, end) for start, end in sample.teacher_target_spans.tolist()],
        )
        singles = [(s[0], t[0]) for s, t in groups if len(s) == len(t) == 1]
        assert singles == sample.aligned_targets(exactly=True)
        multi_token += len(groups) - len(singles)
        teacher_targets = len(sample.teacher_loss_positions())
        student_merged.append(
            theirs._merge_probabilities_with_alignment_groups(
                student_probs[offset : offset + sample.num_targets], [s for s, _ in groups], sample.labels()
            )
        )
        teacher_merged.append(
            theirs._merge_probabilities_with_alignment_groups(
                teacher_probs[teacher_offset : teacher_offset + teacher_targets],
                [t for _, t in groups],
                sample.teacher_labels(),
            )
        )
        offset += sample.num_targets
        teacher_offset += teacher_targets
    assert multi_token > 0
    rows = sum(len(merged) for merged in student_merged)
    mean = theirs._compute_hybrid_uld_loss(torch.cat(student_merged), torch.cat(teacher_merged))
    expected = (0.4 * ce + 0.6 * mean * rows) / batch.normalizer
    torch.testing.assert_close(output.loss, expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(hidden_grad, torch.autograd.grad(expected, hidden)[0], rtol=0, atol=1e-12)
    torch.testing.assert_close(output.kd_sum, mean.detach() * rows, rtol=0, atol=1e-10)
