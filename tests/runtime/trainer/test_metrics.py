"""The trainer's /metrics page as the operator reads it: an algorithm's own figures of the last step (GRPO's
reward, DPO's margin) go from the step's record to the page and from the page into the job's status."""

from dataclasses import replace

from prometheus_client import generate_latest

from kubedistill.operator.progress import parse_progress, with_progress
from kubedistill.runtime.trainer.metrics import TrainerMetrics, publish_step
from kubedistill.runtime.trainer.records import TrainRecord

RECORD = TrainRecord(
    step=3,
    epoch=0,
    loss=0.5,
    kd_loss=0.4,
    ce_loss=0.6,
    grad_norm=1.0,
    learning_rate=1e-5,
    tokens=100,
    targets=50,
    skipped=False,
    step_seconds=2.0,
    tokens_per_second=50.0,
    teacher_seconds=0.1,
    plan_seconds=0.0,
    student_call_seconds=1.9,
    rollout_seconds=0.0,
    transfer_bytes=0,
)


def test_the_steps_figures_reach_the_status_through_metrics_by_name() -> None:
    metrics = TrainerMetrics("team", "rl")
    publish_step(metrics, replace(RECORD, figures={"reward": -2.5, "kl_to_reference": 0.01}), total_steps=8)
    publish_step(metrics, replace(RECORD, step=4, figures={"reward": -2.25, "kl_to_reference": 0.02}), 8)
    other = TrainerMetrics("team", "another")
    publish_step(other, replace(RECORD, figures={"reward": 9.0}), total_steps=8)
    text = (generate_latest(metrics.registry) + generate_latest(other.registry)).decode()

    fields = parse_progress(text, namespace="team", job="rl")

    assert fields["figures"] == {"reward": -2.25, "kl_to_reference": 0.02}, "the last step's, this job's"
    status = with_progress(
        {}, fields, url="http://head:8090/metrics", generation=1, now="2026-01-01T00:00:00Z"
    )
    assert status["figures"] == {"reward": -2.25, "kl_to_reference": 0.02}


def test_a_job_whose_loss_has_no_figures_of_its_own_shows_none() -> None:
    metrics = TrainerMetrics("team", "kd")
    publish_step(metrics, RECORD, total_steps=8)
    assert "figures" not in parse_progress(
        generate_latest(metrics.registry).decode(), namespace="team", job="kd"
    )
