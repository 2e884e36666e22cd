"""Chat records with images, read for a tiny Qwen2-VL saved to disk and loaded back as a job loads it."""

import base64
import copy
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from kubedistill.api.job import SpecError
from kubedistill.api.spec import DataSource, Mode
from kubedistill.runtime.data import BadRecordError, ChatTemplateError, load_samples
from kubedistill.runtime.data.images import (
    IMAGE_TOKEN,
    ImageProcessing,
    batch_image_inputs,
    load_image_processing,
)
from kubedistill.runtime.demo.tiny import (
    CHAT_TEMPLATE,
    TEACHER_SHAPE,
    build_image_processor,
    build_vlm_tokenizer,
    save_tiny,
    save_tiny_vlm,
)

from .builders import CORPUS, FILES, decoded_targets, spec

ASK = "What is this?"
ANSWER = "A red square."


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("vlms")
    tokenizer = build_vlm_tokenizer([*CORPUS, f"{ASK} {ANSWER} a blue circle"])
    return {
        "student": save_tiny_vlm(root / "student", tokenizer),
        "teacher": save_tiny_vlm(root / "teacher", tokenizer, TEACHER_SHAPE, seed=1),
    }


@pytest.fixture(scope="module")
def student(models: dict[str, Path]) -> tuple[Any, ImageProcessing]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(models["student"])
    images = load_image_processing(str(models["student"]), tokenizer)
    assert images is not None
    return tokenizer, images


def write_image(
    path: Path, size: tuple[int, int] = (60, 70), color: tuple[int, int, int] = (200, 0, 0)
) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


def image_chat(*parts: dict[str, Any], answer: str = ANSWER) -> dict[str, Any]:
    user = {"role": "user", "content": [*parts, {"type": "text", "text": ASK}]}
    return {"messages": [user, {"role": "assistant", "content": answer}]}


def url_part(url: str) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": url}}


def write_data(path: Path, records: list[dict[str, Any]]) -> DataSource:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return DataSource(path=str(path))


def load(source: DataSource, student, mode: Mode = Mode.OFF_POLICY, **data: Any):
    tokenizer, images = student
    return load_samples(source, spec(source, **data), tokenizer, mode=mode, images=images)


def test_both_part_shapes_and_a_data_url_give_the_same_sample(tmp_path: Path, student) -> None:
    png = write_image(tmp_path / "data" / "square.png")
    data_url = "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode()
    records = [
        image_chat(url_part("square.png")),
        image_chat({"type": "image", "image": "square.png"}),
        image_chat(url_part(data_url)),
        image_chat({"type": "image", "image": str(png)}),
    ]
    samples = load(write_data(tmp_path / "data" / "train.jsonl", records), student).samples
    assert len(samples) == 4
    first = samples[0]
    for other in samples[1:]:
        assert (other.input_ids.tolist(), other.target_mask.tolist(), other.images) == (
            first.input_ids.tolist(),
            first.target_mask.tolist(),
            first.images,
        )


def test_relative_paths_start_at_the_data_files_folder_not_the_working_directory(
    tmp_path: Path, student, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_image(tmp_path / "set" / "pictures" / "square.png")
    source = write_data(tmp_path / "set" / "train.jsonl", [image_chat(url_part("pictures/square.png"))])
    monkeypatch.chdir(tmp_path)
    (sample,) = load(source, student).samples
    assert sample.images is not None and len(sample.images.image_grid_thw) == 1


def test_the_loss_covers_the_assistants_text_only_and_each_image_becomes_its_patches(
    tmp_path: Path, student
) -> None:
    tokenizer, _ = student
    write_image(tmp_path / "a.png", (60, 70))
    write_image(tmp_path / "b.png", (112, 112), (0, 0, 200))
    record = image_chat(url_part("a.png"), {"type": "image", "image": "b.png"})
    (sample,) = load(write_data(tmp_path / "train.jsonl", [record]), student).samples
    assert decoded_targets(tokenizer, sample.input_ids, sample.target_mask) == f"{ANSWER}<|im_end|>"
    assert sample.images is not None
    # 60x70 resizes to 56x70 -> 4x5 patches; 112x112 -> 8x8; every 2x2 patches make one token.
    assert sample.images.image_grid_thw == ((1, 4, 4), (1, 8, 8))
    image_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    assert sample.input_ids.tolist().count(image_id) == 4 + 16
    assert sample.images.pixel_values.shape[0] == 16 + 64
    prompt = tokenizer.decode(sample.input_ids[: sample.prompt_length])
    assert prompt.endswith(f"<|vision_end|>{ASK}<|im_end|>\n<|im_start|>assistant\n")


def test_the_tiny_student_runs_on_the_samples_tokens_and_images(tmp_path: Path, models, student) -> None:
    from transformers import AutoModelForImageTextToText

    write_image(tmp_path / "a.png")
    (sample,) = load(write_data(tmp_path / "train.jsonl", [image_chat(url_part("a.png"))]), student).samples
    assert sample.images is not None
    model = AutoModelForImageTextToText.from_pretrained(models["student"])
    input_ids = torch.tensor([sample.input_ids])
    inputs = batch_image_inputs([sample.images], input_ids)
    # The model checks that the image features it makes match the image tokens in the sequence.
    logits = model(input_ids=input_ids, **inputs).logits
    assert logits.shape[:2] == (1, len(sample.input_ids))


def test_a_teacher_with_its_own_processor_files_sees_the_students_image_tokens(
    tmp_path: Path, models, student
) -> None:
    from transformers import AutoTokenizer

    write_image(tmp_path / "a.png")
    source = write_data(tmp_path / "train.jsonl", [image_chat(url_part("a.png"))])
    teacher_tokenizer = AutoTokenizer.from_pretrained(models["teacher"])
    teacher_images = load_image_processing(str(models["teacher"]), teacher_tokenizer, "spec.teacher.model")
    tokenizer, images = student
    data = spec(source)
    alone = load_samples(source, data, tokenizer, mode=Mode.OFF_POLICY, images=images)
    both = load_samples(
        source,
        data,
        tokenizer,
        mode=Mode.OFF_POLICY,
        teacher_tokenizer=teacher_tokenizer,
        images=images,
        teacher_images=teacher_images,
    )
    assert both.samples == alone.samples
    assert teacher_images is not None and teacher_images.process([Image.open(tmp_path / "a.png")])[0] == (
        alone.samples[0].images
    )


def test_a_teacher_that_reads_images_otherwise_is_refused_naming_its_model(tmp_path: Path, student) -> None:
    write_image(tmp_path / "a.png", (112, 112))
    source = write_data(tmp_path / "train.jsonl", [image_chat(url_part("a.png"))])
    tokenizer, images = student
    teacher = ImageProcessing(build_image_processor(max_pixels=56 * 56), images.image_token_id, "teacher-dir")
    with pytest.raises(
        SpecError, match=r"^spec\.teacher\.model: .*train\.jsonl:1: the teacher's image processor"
    ):
        load_samples(
            source, spec(source), tokenizer, mode=Mode.OFF_POLICY, images=images, teacher_images=teacher
        )


@pytest.mark.parametrize(
    ("make", "reference", "problem"),
    [
        (None, "missing.png", "cannot read the image 'missing.png' ({folder}/missing.png): No such file"),
        ("text", "broken.png", "the image 'broken.png' ({folder}/broken.png) cannot be read as an image"),
        (None, "data:image/png;base64,@@@", "the data: URL image is not valid base64"),
        (None, "https://example.com/cat.png", "the image 'https://example.com/cat.png' is a remote URL"),
    ],
    ids=["missing", "not-an-image", "bad-data-url", "remote"],
)
def test_an_image_that_cannot_be_read_is_a_bad_record_naming_file_line_and_path(
    tmp_path: Path, student, make: str | None, reference: str, problem: str
) -> None:
    write_image(tmp_path / "good.png")
    if make == "text":
        (tmp_path / reference).write_text("not a png")
    records = [
        image_chat(url_part("good.png")),
        image_chat(url_part(reference)),
        image_chat(url_part("good.png")),
    ]
    source = write_data(tmp_path / "train.jsonl", records)
    where = f"{tmp_path / 'train.jsonl'}:2: 'messages': message 0 content part 0"
    with pytest.raises(BadRecordError) as raised:
        load(source, student, on_bad_record="fail")
    assert str(raised.value).startswith(f"{where}: {problem.format(folder=tmp_path)}")
    skipped = load(source, student, on_bad_record="skip")
    assert [bad.source for bad in skipped.bad_records] == [f"{tmp_path / 'train.jsonl'}:2"]
    assert [sample.source.rsplit(":", 1)[1] for sample in skipped.samples] == ["1", "3"]


def test_an_image_for_a_text_model_refuses_the_job_naming_the_field_even_when_skipping(tokenizer) -> None:
    source = DataSource(path=str(FILES / "image_part.jsonl"))
    for on_bad_record in ("fail", "skip"):
        with pytest.raises(SpecError) as raised:
            load_samples(source, spec(source, on_bad_record=on_bad_record), tokenizer, mode=Mode.OFF_POLICY)
        assert raised.value.field == "spec.data.train"
        assert f"{FILES / 'image_part.jsonl'}:2 has an image" in raised.value.message
        assert "spec.student.model" in raised.value.message
        assert "has no image processor" in raised.value.message


def test_a_text_models_directory_has_no_image_processing(tmp_path: Path, tokenizer) -> None:
    directory = save_tiny(tmp_path / "text", tokenizer)
    assert load_image_processing(str(directory), tokenizer) is None


def test_text_records_of_a_vision_language_job_read_as_they_do_without_images(
    tmp_path: Path, student
) -> None:
    tokenizer, _ = student
    text = {"messages": [{"role": "user", "content": ASK}, {"role": "assistant", "content": ANSWER}]}
    source = write_data(tmp_path / "train.jsonl", [text])
    with_images = load(source, student).samples
    without = load_samples(source, spec(source), tokenizer, mode=Mode.OFF_POLICY).samples
    assert with_images == without and with_images[0].images is None


def test_on_policy_the_prompt_with_its_images_ends_with_the_generation_prompt(
    tmp_path: Path, student
) -> None:
    tokenizer, _ = student
    write_image(tmp_path / "a.png")
    prompt = {"messages": image_chat(url_part("a.png"))["messages"][:1]}
    (sample,) = load(write_data(tmp_path / "train.jsonl", [prompt]), student, mode=Mode.ON_POLICY).samples
    assert sample.prompt_length == len(sample.input_ids) and sample.num_targets == 0
    assert tokenizer.decode(sample.input_ids).endswith("<|im_start|>assistant\n")
    assert sample.images is not None


def test_a_long_response_is_cut_but_a_prompt_with_images_is_not(tmp_path: Path, student) -> None:
    write_image(tmp_path / "a.png")
    long = image_chat(url_part("a.png"), answer=" ".join([ANSWER] * 20))
    source = write_data(tmp_path / "train.jsonl", [long])
    full = load(source, student, max_length=4096, prompt_max_length=2048).samples[0]
    (cut,) = load(source, student, max_length=full.prompt_length + 3, prompt_max_length=2048).samples
    assert cut.input_ids.tolist() == full.input_ids[: full.prompt_length + 3].tolist()
    assert cut.images == full.images
    assert cut.truncation is not None and "maxLength" in cut.truncation
    with pytest.raises(BadRecordError, match="a prompt with images is not cut"):
        load(source, student, max_length=4096, prompt_max_length=full.prompt_length - 1)


def test_an_assistant_message_with_an_image_is_a_bad_record(tmp_path: Path, student) -> None:
    write_image(tmp_path / "a.png")
    record = {
        "messages": [
            {"role": "user", "content": ASK},
            {"role": "assistant", "content": [url_part("a.png")]},
        ]
    }
    with pytest.raises(BadRecordError, match="message 1 is an assistant's and holds an image"):
        load(write_data(tmp_path / "train.jsonl", [record]), student)


# Renders only the text parts: the images' placeholders never reach the tokens.
TEXT_PARTS_ONLY = (
    "{%- for message in messages %}{{- '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['content'] is string %}{{- message['content'] }}{%- else %}"
    "{%- for part in message['content'] if part['type'] == 'text' %}{{- part['text'] }}{%- endfor %}"
    "{%- endif %}{{- '<|im_end|>\\n' }}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


@pytest.mark.parametrize(
    ("template", "problem"),
    [
        (TEXT_PARTS_ONLY, "renders fewer <|image_pad|> placeholders than the chat has images"),
        (CHAT_TEMPLATE, "cannot render a message made of parts"),
    ],
    ids=["drops-images", "text-model-template"],
)
def test_a_chat_template_that_cannot_render_images_is_refused_as_the_templates_fault(
    tmp_path: Path, student, template: str, problem: str
) -> None:
    tokenizer, images = student
    text_only = copy.deepcopy(tokenizer)
    text_only.chat_template = template
    write_image(tmp_path / "a.png")
    source = write_data(tmp_path / "train.jsonl", [image_chat(url_part("a.png"))])
    with pytest.raises(ChatTemplateError, match=rf"train\.jsonl:1: the chat template {re.escape(problem)}"):
        load_samples(source, spec(source), text_only, mode=Mode.OFF_POLICY, images=images)


def test_a_batch_keeps_each_rows_pictures_with_it_and_marks_only_their_tokens(
    tmp_path: Path, student
) -> None:
    write_image(tmp_path / "a.png")
    write_image(tmp_path / "b.png", size=(112, 56), color=(0, 0, 200))
    text_chat = {"messages": [{"role": "user", "content": ASK}, {"role": "assistant", "content": ANSWER}]}
    records = [image_chat(url_part("a.png")), text_chat]
    records.append(image_chat(url_part("b.png"), url_part("a.png")))
    first, text, last = load(write_data(tmp_path / "train.jsonl", records), student).samples
    assert first.images is not None and text.images is None and last.images is not None
    rows = [first, text, last]
    width = max(len(sample.input_ids) for sample in rows)
    pad = 0
    input_ids = torch.tensor([list(s.input_ids) + [pad] * (width - len(s.input_ids)) for s in rows])

    inputs = batch_image_inputs([sample.images for sample in rows], input_ids)

    # Patches in row order, one grid per image: the first row's image, then the last row's two.
    expected_pixels = [first.images.pixel_values, last.images.pixel_values]
    assert torch.equal(inputs["pixel_values"], torch.from_numpy(np.concatenate(expected_pixels)))
    assert inputs["image_grid_thw"].tolist() == [
        list(g) for g in first.images.image_grid_thw + last.images.image_grid_thw
    ]
    marks = inputs["mm_token_type_ids"]
    for row, sample in enumerate(rows):
        image_tokens = [token == first.images.image_token_id for token in sample.input_ids]
        assert marks[row, : len(sample.input_ids)].tolist() == [int(t) for t in image_tokens]
        assert not marks[row, len(sample.input_ids) :].any(), "padding is no image token"
    assert batch_image_inputs([text.images, None], input_ids[:2]) == {}, "a text batch runs as text"
