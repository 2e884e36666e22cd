"""The pure status functions: conditions, the RayJob mirror, progress parsing, spec edits."""

from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from kubedistill.api import parse_job, telemetry
from kubedistill.api.spec import DataSpec, Mode
from kubedistill.api.status import ConditionType, Reason
from kubedistill.operator.conditions import ConditionStatus, DesiredCondition, condition_of, with_conditions
from kubedistill.operator.lifecycle import created_status, spec_change_status
from kubedistill.operator.mirror import deleted_rayjob_status, mirrored_status
from kubedistill.operator.progress import parse_progress, with_metrics_unreachable, with_progress
from kubedistill.operator.render import render_config_map
from kubedistill.operator.spec_changes import classify
from kubedistill.runtime.data import prepare
from kubedistill.runtime.data.prepare import PrepareProgress, build_samples
from kubedistill.runtime.data.records import bytes_to_read, read_records
from kubedistill.runtime.data.tokenize import SampleBuilder
from kubedistill.runtime.demo.tiny import build_tokenizer
from kubedistill.runtime.generation.phase import GenerationProgress
from kubedistill.runtime.generation.store import Usage
from kubedistill.runtime.trainer.metrics import (
    TrainerMetrics,
    pod_namespace,
    publish_generation,
    publish_preparation,
)
from tests.runtime.data.builders import CORPUS, chat, write_jsonl

T0, T1 = "2026-11-25T10:00:00Z", "2026-11-25T11:00:00Z"


def running(status: ConditionStatus, reason: Reason = Reason.RAY_JOB_RUNNING) -> DesiredCondition:
    return DesiredCondition(ConditionType.RUNNING, status, reason, "msg")


def test_a_new_condition_starts_its_transition_now() -> None:
    status = with_conditions({}, [running("True")], generation=3, now=T0)
    assert status["conditions"] == [
        {
            "type": "Running",
            "status": "True",
            "reason": "RayJobRunning",
            "message": "msg",
            "observedGeneration": 3,
            "lastTransitionTime": T0,
        }
    ]


@pytest.mark.parametrize(
    ("first", "then", "transition"),
    [("True", "True", T0), ("True", "False", T1), ("False", "Unknown", T1)],
    ids=["same-status-keeps-the-time", "flip-moves-it", "unknown-is-a-flip-too"],
)
def test_last_transition_time_moves_only_when_the_status_flips(
    first: str, then: str, transition: str
) -> None:
    status = with_conditions({}, [running(first)], generation=1, now=T0)
    status = with_conditions(status, [running(then, Reason.RAY_JOB_PENDING)], generation=2, now=T1)
    (condition,) = status["conditions"]
    assert condition["lastTransitionTime"] == transition
    assert (condition["reason"], condition["observedGeneration"]) == ("RayJobPending", 2)


def test_setting_a_condition_leaves_the_others_in_place() -> None:
    created = DesiredCondition(ConditionType.CREATED, "True", Reason.RAY_JOB_CREATED)
    status = with_conditions({"phase": "Pending"}, [created, running("False")], generation=1, now=T0)
    status = with_conditions(status, [running("True")], generation=1, now=T1)
    assert [c["type"] for c in status["conditions"]] == ["Created", "Running"]
    assert status["phase"] == "Pending"


def rayjob(**status: str) -> dict[str, Any]:
    return {"metadata": {"name": "demo"}, "status": status}


@pytest.mark.parametrize(
    ("kuberay", "phase", "reason", "true_conditions"),
    [
        ({}, "Pending", "RayJobPending", set()),
        ({"jobDeploymentStatus": "Initializing"}, "Pending", "RayJobPending", set()),
        ({"jobDeploymentStatus": "Retrying"}, "Pending", "RayJobPending", set()),
        ({"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"}, "Running", "RayJobRunning", {"Running"}),
        ({"jobDeploymentStatus": "Suspended"}, "Suspended", "RayJobSuspended", {"Suspended"}),
        ({"jobDeploymentStatus": "Suspending"}, "Suspended", "RayJobSuspended", {"Suspended"}),
        (
            {"jobDeploymentStatus": "Complete", "jobStatus": "SUCCEEDED"},
            "Succeeded",
            "RayJobSucceeded",
            {"Succeeded"},
        ),
        ({"jobDeploymentStatus": "Complete", "jobStatus": "FAILED"}, "Failed", "RayJobFailed", {"Failed"}),
        ({"jobDeploymentStatus": "Complete", "jobStatus": "STOPPED"}, "Failed", "RayJobFailed", {"Failed"}),
        ({"jobDeploymentStatus": "Failed", "reason": "AppFailed"}, "Failed", "RayJobFailed", {"Failed"}),
        ({"jobDeploymentStatus": "ValidationFailed"}, "Failed", "RayJobFailed", {"Failed"}),
    ],
)
def test_kuberay_states_map_to_a_phase_and_conditions(
    kuberay: dict[str, str], phase: str, reason: str, true_conditions: set[str]
) -> None:
    status = mirrored_status({}, rayjob(**kuberay), generation=1, now=T0)
    assert status["phase"] == phase
    assert {c["type"] for c in status["conditions"] if c["status"] == "True"} == true_conditions
    assert status["conditions"][0]["reason"] == reason


def test_a_failure_message_carries_kuberays_reason_and_message() -> None:
    kuberay = rayjob(
        jobDeploymentStatus="Failed", reason="JobStatusCheckTimeoutExceeded", message="since 10:00"
    )
    status = mirrored_status({}, kuberay, generation=1, now=T0)
    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert "reason JobStatusCheckTimeoutExceeded" in failed["message"] and "since 10:00" in failed["message"]


@pytest.mark.parametrize(
    ("kuberay_reason", "deadline", "reason", "words"),
    [
        (
            "DeadlineExceeded",
            {"activeDeadlineSeconds": 7200},
            "ActiveDeadlineExceeded",
            "spec.activeDeadlineSeconds",
        ),
        (
            "PreRunningDeadlineExceeded",
            {"preRunningDeadlineSeconds": 3600},
            "PreRunningDeadlineExceeded",
            "spec.preRunningDeadlineSeconds",
        ),
    ],
    ids=["active", "pre-running"],
)
def test_a_deadline_failure_names_the_field_and_its_limit(
    kuberay_reason: str, deadline: dict[str, int], reason: str, words: str
) -> None:
    kuberay = rayjob(jobDeploymentStatus="Failed", reason=kuberay_reason, message="passed it") | {
        "spec": deadline
    }
    status = mirrored_status({}, kuberay, generation=1, now=T0)
    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == reason
    (seconds,) = deadline.values()
    assert f"{words} ({seconds} s)" in failed["message"]
    assert "passed it" in failed["message"], "KubeRay's own message stays"


def test_times_and_the_dashboard_are_copied() -> None:
    kuberay = rayjob(
        jobDeploymentStatus="Complete",
        jobStatus="SUCCEEDED",
        dashboardURL="head:8265",
        startTime=T0,
        endTime=T1,
    )
    status = mirrored_status({}, kuberay, generation=1, now=T1)
    assert (status["dashboardURL"], status["startTime"], status["completionTime"]) == ("head:8265", T0, T1)
    assert status["rayJobName"] == "demo"


@pytest.mark.parametrize("final", ["Succeeded", "Failed"])
def test_a_finished_job_keeps_its_final_status(final: str) -> None:
    status = {"phase": final, "conditions": []}
    assert mirrored_status(status, rayjob(jobDeploymentStatus="Running"), generation=1, now=T0) == status
    assert deleted_rayjob_status(status, "demo", generation=1, now=T0) == status


def test_a_rayjob_deleted_before_the_end_fails_the_job() -> None:
    status = deleted_rayjob_status({"phase": "Running"}, "demo", generation=1, now=T0)
    assert status["phase"] == "Failed"
    assert next(c for c in status["conditions"] if c["type"] == "Failed")["reason"] == "RayJobDeleted"


def test_creation_does_not_override_a_phase_already_mirrored() -> None:
    mirrored = mirrored_status({}, rayjob(jobDeploymentStatus="Running"), generation=1, now=T0)
    assert created_status(mirrored, "demo", "demo-spec", generation=1, now=T0)["phase"] == "Running"
    assert created_status({}, "demo", "demo-spec", generation=1, now=T0)["phase"] == "Pending"


def trainer_page(namespace: str, job: str, **values: float) -> str:
    """The /metrics page the runtime's TrainerMetrics serves, with these telemetry gauges set."""
    metrics = TrainerMetrics(namespace, job)
    for name, value in values.items():
        metrics.set(getattr(telemetry, name), value)
    metrics.observe(telemetry.STEP_SECONDS, 1.5)
    return generate_latest(metrics.registry).decode()


def test_progress_takes_this_jobs_gauges_and_skips_non_finite_values() -> None:
    page = trainer_page("ml", "demo", STEP=42, KD_LOSS=0.25, LAST_STEP_SECONDS=1.5, LOSS=float("nan"))
    fields = parse_progress(page, namespace="ml", job="demo")
    assert fields == {"step": 42, "kd_loss": 0.25, "step_time_seconds": 1.5}
    assert isinstance(fields["step"], int)


def test_progress_while_the_teacher_generates_the_data_reaches_the_status() -> None:
    metrics = TrainerMetrics("ml", "demo")
    progress = GenerationProgress(pairs=300, kept=120, skipped=Counter(length=7, failed=3))
    publish_generation(metrics, replace(progress, usage=Usage(prompt_tokens=9000, completion_tokens=4800)))
    fields = parse_progress(generate_latest(metrics.registry).decode(), namespace="ml", job="demo")
    assert fields == {
        "generation_pairs": 300,
        "generated_pairs": 120,
        "generation_skipped_pairs": 10,
        "generation_prompt_tokens": 9000,
        "generation_completion_tokens": 4800,
    }
    status = with_progress({}, fields, url="http://head:8090/metrics", generation=1, now=T0)
    assert (status["generatedPairs"], status["generationPairs"]) == (120, 300)
    known = condition_of(status, ConditionType.PROGRESS_UNKNOWN)
    assert known is not None and known["status"] == "False", "the job is making its data, not stuck"


def test_progress_while_the_records_are_prepared_reaches_the_status(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The preparation's own progress, published as it goes, read back by the operator's parser: records
    done, their pace and the time left by the share of the file read, 0 once all is done."""
    tokenizer = build_tokenizer(CORPUS, vocab_size=512)
    chats = [
        chat(("user", "What is 2+2? " * (n % 5 + 1)), ("assistant", "The answer is 4.")) for n in range(12)
    ]
    source = write_jsonl(tmp_path / "train.jsonl", chats)
    build = SampleBuilder(source, DataSpec(train=source), tokenizer, Mode.OFF_POLICY, tokenizer)
    metrics = TrainerMetrics("ml", "demo")
    pages: list[str] = []

    def publish(progress: PrepareProgress) -> None:
        publish_preparation(metrics, progress)
        pages.append(generate_latest(metrics.registry).decode())

    monkeypatch.setattr(prepare, "PUBLISH_SECONDS", 0.0)
    read = bytes_to_read(source)
    records = read_records(source, read=read)
    samples = list(build_samples(build, records, 1, serial_records=2, read=read, on_progress=publish))

    halfway = parse_progress(pages[5], namespace="ml", job="demo")
    assert halfway["prepared_records"] == 6
    assert halfway["preparation_eta_seconds"] > 0 and halfway["preparation_records_per_second"] > 0
    done = parse_progress(pages[-1], namespace="ml", job="demo")
    assert (done["prepared_records"], done["preparation_eta_seconds"]) == (len(samples), 0.0)
    status = with_progress({}, done, url="http://head:8090/metrics", generation=1, now=T0)
    assert status["preparedRecords"] == 12
    known = condition_of(status, ConditionType.PROGRESS_UNKNOWN)
    assert known is not None and known["status"] == "False", "the job is preparing its data, not stuck"


@pytest.mark.parametrize(("namespace", "job"), [("ml", "other"), ("team-b", "demo"), ("local", "demo")])
def test_progress_skips_the_series_of_another_job(namespace: str, job: str) -> None:
    assert parse_progress(trainer_page(namespace, job, STEP=7), namespace="ml", job="demo") == {}


def test_the_trainers_labels_survive_a_prometheus_scrape() -> None:
    # Target labels a ServiceMonitor/PodMonitor scrape adds; an exported label of the same name would be
    # renamed `exported_<name>` (prometheus-operator's default honorLabels: false).
    target_labels = {"namespace", "job", "pod", "service", "container", "endpoint", "instance"}
    for family in text_string_to_metric_families(trainer_page("ml", "demo", STEP=1)):
        for sample in family.samples:
            assert not set(sample.labels) & target_labels, sample


def test_text_that_is_not_prometheus_format_is_an_error() -> None:
    with pytest.raises(ValueError):
        parse_progress("kubedistill_step not-a-number\n", namespace="ml", job="demo")


def test_unreachable_then_reachable_metrics_flip_progress_unknown() -> None:
    status = with_metrics_unreachable(
        {"step": 3}, "connection refused", url="http://h/metrics", generation=1, now=T0
    )
    unknown = status["conditions"][0]
    assert (unknown["status"], unknown["reason"]) == ("True", "MetricsUnreachable")
    assert "connection refused" in unknown["message"] and status["step"] == 3
    status = with_progress(status, {"step": 4}, url="http://h/metrics", generation=1, now=T1)
    known = status["conditions"][0]
    assert (known["status"], known["reason"], known["lastTransitionTime"]) == ("False", "MetricsRead", T1)
    assert status["step"] == 4


BASE_SPEC: dict[str, Any] = {
    "teacher": {"model": "t"},
    "student": {"model": "s"},
    "data": {"train": {"path": "/d.jsonl"}},
}


def spec(**changes: Any) -> Any:
    manifest = {
        "apiVersion": "kubedistill.io/v1alpha1",
        "kind": "DistillationJob",
        "metadata": {"name": "demo"},
        "spec": {**BASE_SPEC, **changes},
    }
    return parse_job(manifest, check_plugin_names=False).spec


@pytest.mark.parametrize(
    ("deployed", "wanted", "patch", "ignored"),
    [
        ({}, {}, {"ttlSecondsAfterFinished": 60, "suspend": False}, ()),
        ({}, {"suspend": True}, {"ttlSecondsAfterFinished": 60, "suspend": True}, ()),
        ({}, {"ttlSecondsAfterFinished": 600}, {"ttlSecondsAfterFinished": 600, "suspend": False}, ()),
        ({}, {"backoffLimit": 2}, {"ttlSecondsAfterFinished": 60, "suspend": False}, ()),
        (
            {},
            {"student": {"model": "s", "replicas": 2}, "training": {"learningRate": 1e-5}},
            {"ttlSecondsAfterFinished": 60, "suspend": False},
            ("spec.student.replicas", "spec.training.learningRate"),
        ),
        (
            {"cluster": {"queueName": "q"}},
            {"cluster": {"queueName": "q"}, "suspend": True},
            {"ttlSecondsAfterFinished": 60},
            ("spec.suspend",),
        ),
        (
            {},
            {"cluster": {"volumes": [{"name": "x", "emptyDir": {}}]}},
            {"ttlSecondsAfterFinished": 60, "suspend": False},
            ("spec.cluster.volumes",),
        ),
    ],
    ids=[
        "nothing",
        "suspend",
        "ttl",
        "explicit-default-is-no-change",
        "immutable-fields-named",
        "kueue-owns-suspend",
        "lists-compare-whole",
    ],
)
def test_spec_edits_split_into_what_reaches_the_rayjob_and_what_is_ignored(
    deployed: dict[str, Any], wanted: dict[str, Any], patch: dict[str, Any], ignored: tuple[str, ...]
) -> None:
    change = classify(spec(**deployed), spec(**wanted))
    assert (change.rayjob_patch, change.ignored) == (patch, ignored)


def test_spec_change_ignored_turns_false_once_the_edit_is_reverted_and_is_absent_before() -> None:
    assert spec_change_status({}, (), generation=1, now=T0) == {}
    status = spec_change_status({}, ("spec.student.replicas",), generation=2, now=T0)
    ignored = status["conditions"][0]
    assert (ignored["status"], ignored["reason"]) == ("True", "ImmutableFieldChanged")
    assert "spec.student.replicas" in ignored["message"]
    status = spec_change_status(status, (), generation=3, now=T1)
    assert (status["conditions"][0]["status"], status["conditions"][0]["reason"]) == ("False", "SpecApplied")


@pytest.mark.parametrize(
    ("manifest_namespace", "pod_env", "labelled"),
    [
        ("ml", {"KUBEDISTILL_NAMESPACE": "ml"}, "ml"),
        (None, {"KUBEDISTILL_NAMESPACE": "ml"}, "ml"),
        ("ml", {}, "ml"),
    ],
    ids=["pod-and-manifest", "pod-only", "manifest-only"],
)
def test_the_trainer_labels_its_series_with_the_namespace_the_operator_reads(
    manifest_namespace: str | None, pod_env: dict[str, str], labelled: str
) -> None:
    metadata = {"name": "demo", **({"namespace": manifest_namespace} if manifest_namespace else {})}
    manifest = {"apiVersion": "kubedistill.io/v1alpha1", "kind": "DistillationJob", "spec": BASE_SPEC}
    config_map = render_config_map(parse_job({**manifest, "metadata": metadata}, check_plugin_names=False))
    # What `kubedistill run` reads in the pod: the ConfigMap's manifest, and the pod's env.
    job = parse_job(yaml.safe_load(config_map["data"]["job.yaml"]), check_plugin_names=False)
    namespace = pod_namespace(job, pod_env)
    assert namespace == labelled
    page = trainer_page(namespace, job.name, STEP=3)
    assert parse_progress(page, namespace="ml", job="demo") == {"step": 3}


def test_a_local_run_of_a_manifest_without_a_namespace_has_none() -> None:
    manifest = {"apiVersion": "kubedistill.io/v1alpha1", "kind": "DistillationJob", "spec": BASE_SPEC}
    job = parse_job({**manifest, "metadata": {"name": "demo"}}, check_plugin_names=False)
    assert pod_namespace(job, {}) is None
