"""A vision-language teacher (the tiny Qwen2-VL) on the real SGLang engine (CPU, fp32): its images go with
their sequences as the HF processor made them (`args.image_data_for`), and the hidden states equal the
transformers teacher's for the same tokens and pixels.

The engine runs in a process of its own: started inside a pytest worker whose output is captured, SGLang's
multimodal engine was killed with the worker (not yet understood; without capture, and alone, it runs)."""

import json
import subprocess
import sys

import pytest

from tests.runtime.engines.sglang.wheel_source import ROOT

pytestmark = pytest.mark.sglang

TOLERANCE = 1e-5
"""fp32 through a vision tower and the language model, ragged against padded: measured 1.7e-6."""

PROBE = """
import json, sys
from pathlib import Path

# The repository root after the standard library: its folder operator/ must not hide `operator`.
sys.path.append(sys.argv[2])

import torch

from kubedistill.api.spec import Precision, TeacherSpec
from kubedistill.runtime.demo.data import picture_texts
from kubedistill.runtime.demo.tiny import TinyShape, build_vlm_tokenizer, save_tiny_vlm
from kubedistill.runtime.engines.layout import single_node_placement
from kubedistill.runtime.engines.sglang.teacher import SGLangTeacher
from kubedistill.runtime.engines.transformers.teacher import TransformersTeacher
from kubedistill.runtime.teacher.backend import TeacherBatch
from kubedistill.runtime.trainer.planning import teacher_batch
from tests.runtime.engines.transformers.test_vision_teacher import samples

SHAPE = TinyShape(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4,
                  num_key_value_heads=2, tie_word_embeddings=False)


def main():
    root = Path(sys.argv[1])
    vlm = save_tiny_vlm(root / "teacher", build_vlm_tokenizer(picture_texts(), vocab_size=600), SHAPE)
    batch = teacher_batch(samples(vlm, root, count=3))
    expected = TransformersTeacher(str(vlm), torch.float32, torch.device("cpu")).hidden_states(batch)
    engine = SGLangTeacher(TeacherSpec(mem_fraction_static=0.3), str(vlm), single_node_placement("cpu"),
                           colocate=False, precision=Precision.FP32)
    try:
        hidden = engine.hidden_states(batch)
        (sample, *_) = samples(vlm, root / "one", count=1)
        dark = type(sample.images)(sample.images.pixel_values * 0.0, sample.images.image_grid_thw,
                                   sample.images.image_token_id)
        sequence, positions = [list(sample.input_ids)], [sample.loss_positions()]
        seen = engine.hidden_states(TeacherBatch(sequence, positions, [sample.images]))
        other = engine.hidden_states(TeacherBatch(sequence, positions, [dark]))
    finally:
        engine.close()
    print(json.dumps({
        "every_sequence_has_images": all(images is not None for images in batch.images),
        "shape": list(hidden.shape), "expected_shape": list(expected.shape),
        "gap": (hidden - expected).abs().max().item(),
        "picture_gap": (seen - other).abs().max().item(),
    }))


if __name__ == "__main__":
    main()
"""


@pytest.fixture(scope="module")
def probe(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("vision-teacher-on-sglang")
    (root / "one").mkdir()
    script = root / "probe.py"
    script.write_text(PROBE, encoding="utf-8")
    done = subprocess.run(
        [sys.executable, str(script), str(root), str(ROOT)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_hidden_states_with_pictures_equal_the_transformers_teachers(probe: dict) -> None:
    assert probe["every_sequence_has_images"]
    assert probe["shape"] == probe["expected_shape"]
    assert probe["gap"] <= TOLERANCE


def test_the_picture_reaches_the_sglang_teacher(probe: dict) -> None:
    assert probe["picture_gap"] > 1e-4, "another picture, the same text: other hidden states"
