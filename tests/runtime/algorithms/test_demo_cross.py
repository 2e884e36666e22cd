"""The cross-tokenizer examples run on what `kubedistill.runtime.demo.cross` writes."""

from pathlib import Path

from transformers import AutoTokenizer

from kubedistill.api.manifest import load_job
from kubedistill.runtime.algorithms.simple_ctkd import checked_shared_vocabulary
from kubedistill.runtime.data.alignment import same_vocabulary
from kubedistill.runtime.demo.cross import prepare_cross_tokenizer_assets

EXAMPLES = Path(__file__).resolve().parents[3] / "examples" / "local"


def test_the_other_teacher_has_a_tokenizer_of_its_own_that_simple_ctkd_accepts(tmp_path: Path) -> None:
    teacher = prepare_cross_tokenizer_assets(tmp_path)
    assert teacher == tmp_path / "assets" / "teacher-other-tokenizer"
    student = AutoTokenizer.from_pretrained(tmp_path / "assets" / "student-init")
    other = AutoTokenizer.from_pretrained(teacher)
    assert not same_vocabulary(student, other)
    assert len(checked_shared_vocabulary(student, other)) > 0.5 * len(student)
    assert prepare_cross_tokenizer_assets(tmp_path) == teacher, "a second call keeps what is there"


def test_the_examples_distil_the_teacher_trained_from_those_assets() -> None:
    sft = load_job(EXAMPLES / "teacher-other-tokenizer-sft.yaml").spec
    assert sft.student.model == "demo-output/assets/teacher-other-tokenizer"
    for name, algorithm in (("simple-ctkd", "simpleCtkd"), ("dskd", "dskd")):
        spec = load_job(EXAMPLES / f"{name}.yaml").spec
        assert spec.distillation.algorithm == algorithm
        assert spec.teacher.model == sft.output.path
        assert spec.student.model == "demo-output/assets/student-init"
