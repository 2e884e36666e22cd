"""A vision-language teacher on transformers: its hidden states see the pictures, and times its head they are
the logits the whole model gives for the same tokens and pixels."""

from pathlib import Path

import pytest
import torch

from kubedistill.api.spec import DataSource, DataSpec, Mode
from kubedistill.runtime.data import load_samples
from kubedistill.runtime.data.images import batch_image_inputs, load_image_processing
from kubedistill.runtime.data.sample import Sample
from kubedistill.runtime.demo.data import picture_records, picture_texts, write_jsonl
from kubedistill.runtime.demo.tiny import TinyShape, build_vlm_tokenizer, save_tiny_vlm
from kubedistill.runtime.engines.transformers.teacher import TransformersTeacher
from kubedistill.runtime.models.loading import load_causal_lm, load_lm_head_weight, load_tokenizer
from kubedistill.runtime.teacher.backend import TeacherBatch
from kubedistill.runtime.trainer.planning import teacher_batch

SHAPE = TinyShape(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)


@pytest.fixture(scope="module")
def vlm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("vision-teacher")
    return save_tiny_vlm(root / "teacher", build_vlm_tokenizer(picture_texts(), vocab_size=600), SHAPE)


def samples(vlm: Path, folder: Path, count: int = 4) -> list[Sample]:
    tokenizer = load_tokenizer(str(vlm))
    data = write_jsonl(folder / "chats.jsonl", picture_records(folder, count, seed=2))
    source = DataSource(path=str(data))
    return load_samples(
        source,
        DataSpec.model_validate({"train": {"path": str(data)}, "maxLength": 64, "promptMaxLength": 48}),
        tokenizer,
        mode=Mode.OFF_POLICY,
        images=load_image_processing(str(vlm), tokenizer),
    ).samples


def test_hidden_states_times_the_head_are_the_models_logits_with_its_pictures(
    vlm: Path, tmp_path: Path
) -> None:
    teacher = TransformersTeacher(str(vlm), torch.float32, torch.device("cpu"))
    batch = samples(vlm, tmp_path)
    hidden = teacher.hidden_states(teacher_batch(batch))

    model = load_causal_lm(str(vlm)).eval()
    head = load_lm_head_weight(str(vlm))
    assert model.config.tie_word_embeddings, "the tied head is read from the language model's embeddings"
    expected = []
    for sample in batch:
        input_ids = torch.tensor([sample.input_ids])
        logits = model(input_ids=input_ids, **batch_image_inputs([sample.images], input_ids)).logits[0]
        expected.append(logits[sample.loss_positions()])
    # Each row alone against all rows padded into one batch: the rows' pictures stay with their rows.
    torch.testing.assert_close(hidden @ head.T, torch.cat(expected), rtol=1e-4, atol=1e-4)


def test_the_picture_reaches_the_teacher(vlm: Path, tmp_path: Path) -> None:
    teacher = TransformersTeacher(str(vlm), torch.float32, torch.device("cpu"))
    (sample, *_) = samples(vlm, tmp_path)
    assert sample.images is not None
    dark = type(sample.images)(
        sample.images.pixel_values * 0.0, sample.images.image_grid_thw, sample.images.image_token_id
    )
    sequence, positions = [list(sample.input_ids)], [sample.loss_positions()]
    seen = teacher.hidden_states(TeacherBatch(sequence, positions, [sample.images]))
    other = teacher.hidden_states(TeacherBatch(sequence, positions, [dark]))
    assert not torch.allclose(seen, other), "another picture, the same text: other hidden states"
