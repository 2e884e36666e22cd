"""Assets for the cross-tokenizer examples: the demo's data and student, and a teacher with its own tokenizer.

`examples/local/simple-ctkd.yaml` and `examples/local/dskd.yaml` distil a teacher whose tokenizer is not the
student's. This writes one next to the demo's assets: `assets/teacher-other-tokenizer`, a tiny teacher whose
BPE tokenizer is trained on the same text with a larger vocabulary (so it splits the text differently and
numbers its tokens differently). `examples/local/teacher-other-tokenizer-sft.yaml` then teaches it the task.

    python -m kubedistill.runtime.demo.cross demo-output
"""

import sys
from pathlib import Path

from kubedistill.runtime.demo.data import chat_records
from kubedistill.runtime.demo.run import EVAL_RECORDS, TRAIN_RECORDS, prepare
from kubedistill.runtime.demo.tiny import TEACHER_SHAPE, build_tokenizer, save_tiny

OTHER_VOCABULARY = 512
"""The demo's own tokenizer has 400 tokens."""


def prepare_cross_tokenizer_assets(root: Path, seed: int = 0) -> Path:
    """Write the demo's assets and the other-tokenizer teacher (idempotent); returns the teacher's path."""
    assets = prepare(root, seed)
    teacher = assets.root / "assets" / "teacher-other-tokenizer"
    if teacher.joinpath("config.json").exists():
        return teacher
    records = chat_records(TRAIN_RECORDS, seed) + chat_records(EVAL_RECORDS, seed + 1)
    texts = [" ".join(message["content"] for message in record["messages"]) for record in records]
    return save_tiny(teacher, build_tokenizer(texts, vocab_size=OTHER_VOCABULARY), TEACHER_SHAPE, seed=seed)


if __name__ == "__main__":
    print(prepare_cross_tokenizer_assets(Path(sys.argv[1] if len(sys.argv) > 1 else "demo-output")))
