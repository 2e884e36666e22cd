"""Checkpoint directories: a checkpoint is complete or it does not exist."""

from datetime import UTC, datetime
from pathlib import Path

from kubedistill.runtime.trainer.checkpoints import CheckpointDirectory, TrainerState, find_checkpoint

ORIGIN = {"spec": {"spec.training.learningRate": 0.01}, "data": {"records": 4, "sha256": "00"}}


def _write(directory: CheckpointDirectory, step: int) -> Path:
    staging = directory.staging(step)
    (staging / "shard.bin").write_bytes(b"weights")
    return directory.commit(staging, TrainerState(step=step, epoch=0, batch_in_epoch=step), ORIGIN)


def test_a_committed_checkpoint_is_found_with_its_trainer_state(tmp_path: Path) -> None:
    directory = CheckpointDirectory(tmp_path, keep=3)
    path = _write(directory, 4)
    latest = directory.latest()
    assert latest is not None
    assert latest.path == path == tmp_path / "step-00000004"
    assert latest.state == TrainerState(step=4, epoch=0, batch_in_epoch=4)
    assert latest.origin == ORIGIN, "each checkpoint says what it was made from"


def test_a_checkpoint_interrupted_while_writing_is_ignored_and_the_previous_one_used(tmp_path: Path) -> None:
    directory = CheckpointDirectory(tmp_path, keep=3)
    _write(directory, 2)
    crashed = directory.staging(4)
    (crashed / "shard.bin").write_bytes(b"half a shard")
    latest = directory.latest()
    assert latest is not None and latest.state.step == 2
    assert not crashed.exists(), "the half-written staging directory is cleaned up"


def test_a_committed_directory_without_trainer_state_is_not_trusted(tmp_path: Path) -> None:
    directory = CheckpointDirectory(tmp_path, keep=3)
    _write(directory, 2)
    (tmp_path / "step-00000009").mkdir()
    latest = directory.latest()
    assert latest is not None and latest.state.step == 2


def test_only_the_newest_checkpoints_are_kept(tmp_path: Path) -> None:
    directory = CheckpointDirectory(tmp_path, keep=2)
    for step in (1, 2, 3, 4):
        _write(directory, step)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-00000003", "step-00000004"]


def test_no_directory_means_a_fresh_start(tmp_path: Path) -> None:
    assert CheckpointDirectory(tmp_path / "absent", keep=1).latest() is None


def test_moving_aside_keeps_the_old_checkpoints_under_a_dated_name(tmp_path: Path) -> None:
    directory = CheckpointDirectory(tmp_path / "ckpt", keep=3)
    _write(directory, 2)
    aside = directory.move_aside(datetime(2026, 12, 2, 1, 2, 3, tzinfo=UTC))
    assert aside == tmp_path / "ckpt.old-20261202T010203Z"
    assert (aside / "step-00000002" / "trainer.json").is_file()
    assert directory.latest() is None
    assert directory.move_aside(datetime(2026, 12, 2, tzinfo=UTC)) is None, "nothing left to move"


def test_a_folder_holding_only_the_prepared_data_is_no_old_run_to_move_aside(tmp_path: Path) -> None:
    (tmp_path / "ckpt" / "prepared" / "spec.data.train-0123").mkdir(parents=True)
    assert (
        CheckpointDirectory(tmp_path / "ckpt", keep=3).move_aside(datetime(2026, 12, 2, tzinfo=UTC)) is None
    )
    assert (tmp_path / "ckpt" / "prepared").is_dir()


def test_another_jobs_checkpoint_is_found_by_its_folder_or_its_step_without_touching_the_folder(
    tmp_path: Path,
) -> None:
    """spec.checkpoint.resumeFrom reads another job's folder: its staging directory is that job's own."""
    directory = CheckpointDirectory(tmp_path, keep=3)
    _write(directory, 2)
    newest = _write(directory, 4)
    staging = directory.staging(6)
    assert find_checkpoint(tmp_path) == find_checkpoint(newest)
    found = find_checkpoint(tmp_path / "step-00000002")
    assert found is not None and found.state.step == 2
    assert find_checkpoint(tmp_path / "absent") is None
    assert staging.is_dir()
