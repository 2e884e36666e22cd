"""metrics.jsonl as the trainer writes it: a line per record as it is made, rewound to a resume point."""

import json
from pathlib import Path

from kubedistill.runtime.trainer.records import EvalRecord, ProbeRecord, RecordLog, TrainRecord, read_records


def _train(step: int, loss: float = 1.0) -> TrainRecord:
    return TrainRecord(
        step=step,
        epoch=0,
        loss=loss,
        kd_loss=loss,
        ce_loss=loss,
        grad_norm=0.5,
        learning_rate=1e-3,
        tokens=100,
        targets=40,
        skipped=False,
        step_seconds=0.5,
        tokens_per_second=200.0,
        teacher_seconds=0.0,
        plan_seconds=0.01,
        student_call_seconds=0.4,
        rollout_seconds=0.0,
        transfer_bytes=1000,
        timings={"compute_seconds": 0.3},
    )


def _steps(path: Path) -> list[tuple[str, int]]:
    return [(r["kind"], r["step"]) for r in read_records(path)]


def test_each_record_is_on_disk_as_soon_as_it_is_appended(tmp_path: Path) -> None:
    log = RecordLog(tmp_path, resume_step=None)
    log.append(_train(1))
    assert _steps(log.path) == [("train", 1)]
    log.append(
        EvalRecord(
            step=1, eval_ce_loss=2.0, eval_kd_divergence=None, eval_teacher_agreement=None, eval_tokens=9
        )
    )
    log.append(ProbeRecord(step=1, response="hi"))
    assert _steps(log.path) == [("train", 1), ("eval", 1), ("probe", 1)]


def test_a_train_record_is_one_flat_json_object_with_its_timings_beside_the_other_fields(
    tmp_path: Path,
) -> None:
    log = RecordLog(tmp_path, resume_step=None)
    log.append(_train(1))
    line = json.loads(log.path.read_text().splitlines()[0])
    assert line["kind"] == "train" and line["compute_seconds"] == 0.3 and "timings" not in line


def test_a_fresh_run_starts_an_empty_file_and_a_resumed_one_keeps_the_steps_up_to_its_checkpoint(
    tmp_path: Path,
) -> None:
    log = RecordLog(tmp_path, resume_step=None)
    for step in range(1, 6):
        log.append(_train(step, loss=float(step)))
    log.append(ProbeRecord(step=5, response="x"))

    resumed = RecordLog(tmp_path, resume_step=3)
    assert _steps(resumed.path) == [("train", 1), ("train", 2), ("train", 3)]
    assert resumed.totals.train_steps == 3
    assert resumed.totals.last_train is not None and resumed.totals.last_train["loss"] == 3.0
    assert resumed.totals.transfer_bytes == 3000

    assert _steps(RecordLog(tmp_path, resume_step=None).path) == []


def test_rewinding_drops_the_steps_trained_again_and_their_totals(tmp_path: Path) -> None:
    log = RecordLog(tmp_path, resume_step=None)
    for step in range(1, 5):
        log.append(_train(step))
    log.rewind(2)
    log.append(_train(3))
    assert [step for _, step in _steps(log.path)] == [1, 2, 3]
    assert log.totals.train_steps == 3
    assert log.totals.step_seconds == 1.5


def test_a_line_cut_short_by_a_crash_is_left_out_on_resume(tmp_path: Path) -> None:
    log = RecordLog(tmp_path, resume_step=None)
    log.append(_train(1))
    with log.path.open("a") as stream:
        stream.write('{"kind": "train", "step": 2, "lo')
    assert _steps(RecordLog(tmp_path, resume_step=2).path) == [("train", 1)]
