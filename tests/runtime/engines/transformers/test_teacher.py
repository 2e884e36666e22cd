"""The transformers teacher returns the exact input of the teacher's lm_head at the asked positions."""

import torch

from kubedistill.runtime.engines.transformers.teacher import TransformersTeacher
from kubedistill.runtime.models.loading import load_causal_lm, load_lm_head_weight
from kubedistill.runtime.teacher.backend import TeacherBatch
from tests.runtime.conftest import TinyWorld


def test_hidden_states_times_the_head_are_the_teachers_logits(tiny: TinyWorld) -> None:
    teacher = TransformersTeacher(str(tiny.teacher), torch.float32, torch.device("cpu"))
    sequences = [[5, 9, 14, 3, 22], [7, 8, 2]]
    positions = [[1, 3], [0, 1, 2]]
    hidden = teacher.hidden_states(TeacherBatch(sequences, positions))
    assert hidden.shape == (5, teacher.hidden_size)

    model = load_causal_lm(str(tiny.teacher)).eval()
    head = load_lm_head_weight(str(tiny.teacher))
    expected = []
    for sequence, wanted in zip(sequences, positions, strict=True):
        logits = model(torch.tensor([sequence])).logits[0]
        expected.append(logits[wanted])
    torch.testing.assert_close(hidden @ head.T, torch.cat(expected), rtol=1e-5, atol=1e-5)


def test_padding_does_not_change_a_sequences_hidden_states(tiny: TinyWorld) -> None:
    teacher = TransformersTeacher(str(tiny.teacher), torch.float32, torch.device("cpu"))
    alone = teacher.hidden_states(TeacherBatch([[7, 8, 2]], [[0, 1, 2]]))
    padded = teacher.hidden_states(TeacherBatch([[5, 9, 14, 3, 22, 30, 31], [7, 8, 2]], [[], [0, 1, 2]]))
    torch.testing.assert_close(alone, padded, rtol=1e-5, atol=1e-5)


def test_a_tied_student_head_is_read_from_the_embeddings(tiny: TinyWorld) -> None:
    model = load_causal_lm(str(tiny.student))
    assert model.config.tie_word_embeddings
    torch.testing.assert_close(load_lm_head_weight(str(tiny.student)), model.get_input_embeddings().weight)


def test_update_weights_loads_new_values_in_place(tiny: TinyWorld) -> None:
    teacher = TransformersTeacher(str(tiny.teacher), torch.float32, torch.device("cpu"))
    batch = TeacherBatch([[5, 9, 14]], [[0, 1, 2]])
    before = teacher.hidden_states(batch)
    model = load_causal_lm(str(tiny.teacher))
    teacher.begin_weight_update()
    teacher.update_weights((name, value * 1.5) for name, value in model.named_parameters())
    teacher.end_weight_update()
    assert not torch.allclose(teacher.hidden_states(batch), before)
