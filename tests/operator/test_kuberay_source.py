"""Source checks: KubeRay cannot run here, so what the operator relies on in it is cited file:line beside
the code, and each cited line is checked against KubeRay's source at the pinned commit (feeaf72f, the
commit of the CRDs in kuberay_crds/), copied unchanged into kuberay_source/. A KubeRay upgrade that moves
or changes a line fails here until the citation, and the behaviour it stands for, are checked again."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SOURCE = Path(__file__).resolve().parent / "kuberay_source"

CITED: list[tuple[str, int, str]] = [
    # Submission (issue 32, item 8): HTTPMode has no submitter Job, hence no `ray job logs --follow`.
    ("apis/ray/v1/rayjob_types.go", 84, 'HTTPMode        JobSubmissionMode = "HTTPMode"'),
    ("controllers/ray/common/job.go", 130, '"ray", "job", "logs", "--address", address, "--follow", jobId'),
    (
        "controllers/ray/rayjob_controller.go",
        230,
        "if rayJobInstance.Spec.SubmissionMode == rayv1.K8sJobMode {",
    ),
    ("controllers/ray/rayjob_controller.go", 236, "JobDeploymentStatus = rayv1.JobDeploymentStatusRunning"),
    (
        "controllers/ray/rayjob_controller.go",
        279,
        "if rayJobInstance.Spec.SubmissionMode == rayv1.K8sJobMode || "
        "rayJobInstance.Spec.SubmissionMode == rayv1.SidecarMode {",
    ),
    (
        "controllers/ray/rayjob_controller.go",
        305,
        "if rayJobInstance.Spec.SubmissionMode == rayv1.HTTPMode {",
    ),
    ("controllers/ray/rayjob_controller.go", 1315, "rayDashboardClient.SubmitJob(ctx, rayJob)"),
    ("controllers/ray/rayjob_controller.go", 356, "rayJobInstance.Status.Message = jobInfo.Message"),
    # Deadlines (item 9): both count from StartTime, which every new attempt resets.
    ("apis/ray/v1/rayjob_types.go", 212, "ActiveDeadlineSeconds *int32"),
    ("apis/ray/v1/rayjob_types.go", 290, "PreRunningDeadlineSeconds *int32"),
    (
        "apis/ray/v1/rayjob_types.go",
        72,
        'DeadlineExceeded                                 JobFailedReason = "DeadlineExceeded"',
    ),
    ("apis/ray/v1/rayjob_types.go", 73, "PreRunningDeadlineExceeded                       JobFailedReason"),
    (
        "controllers/ray/rayjob_controller.go",
        188,
        "checkPreRunningDeadlineAndUpdateStatusIfNeeded(ctx, rayJobInstance)",
    ),
    ("controllers/ray/rayjob_controller.go", 916, "rayJob.Status.StartTime = &metav1.Time{Time: time.Now()}"),
    ("controllers/ray/rayjob_controller.go", 543, "if rayJob.Status.Reason == rayv1.DeadlineExceeded ||"),
    # The per-RayJob head Service and the metrics port (item 15).
    (
        "controllers/ray/rayjob_controller.go",
        273,
        "err = r.reconcileServices(ctx, rayJobInstance, rayClusterInstance)",
    ),
    (
        "controllers/ray/common/job.go",
        25,
        "service, err := BuildServiceForHeadPod(ctx, rayCluster, nil, nil)",
    ),
    (
        "controllers/ray/common/service.go",
        25,
        "func HeadServiceLabels(cluster rayv1.RayCluster) map[string]string {",
    ),
    (
        "controllers/ray/common/service.go",
        30,
        "utils.KubernetesApplicationNameLabelKey: utils.ApplicationName,",
    ),
    ("controllers/ray/common/service.go", 52, "selector[k] = defaultLabels[k]"),
    (
        "controllers/ray/common/service.go",
        403,
        "func getServicePorts(cluster rayv1.RayCluster) map[string]int32 {",
    ),
    ("controllers/ray/common/service.go", 413, "ports[utils.MetricsPortName] = utils.DefaultMetricsPort"),
    ("controllers/ray/common/service.go", 430, "svcPorts[port.Name] = port.ContainerPort"),
    (
        "controllers/ray/common/pod.go",
        1167,
        "func labelPod(rayNodeType rayv1.RayNodeType, rayClusterName string,",
    ),
    (
        "controllers/ray/common/pod.go",
        1174,
        "utils.KubernetesApplicationNameLabelKey: utils.ApplicationName,",
    ),
    ("controllers/ray/common/pod.go", 1187, "labels[k] = v"),
    ("controllers/ray/utils/constant.go", 108, "DefaultMetricsPort              = 8080"),
    ("controllers/ray/utils/constant.go", 115, 'MetricsPortName   = "metrics"'),
    ("controllers/ray/utils/constant.go", 126, 'ApplicationName = "kuberay"'),
    # SIGTERM (issue 33, item 4): a run that exits non-zero fails the RayJob, which is retried.
    ("controllers/ray/rayjob_controller.go", 346, "jobDeploymentStatus = rayv1.JobDeploymentStatusFailed"),
    (
        "controllers/ray/rayjob_controller.go",
        542,
        "if rayJob.Status.JobDeploymentStatus == rayv1.JobDeploymentStatusFailed && rayJob.Spec.BackoffLimit",
    ),
]

# Where the code (the operator's, the trainer's exit on SIGTERM) and the tests' stand-ins for KubeRay cite
# its source.
CITING = [
    *sorted((ROOT / "operator").glob("*.py")),
    ROOT / "tests" / "e2e" / "kuberay.py",
    Path(__file__).resolve().parent / "kuberay.py",
    ROOT / "runtime" / "trainer" / "stopping.py",
]
CITATION = re.compile(r"\b([\w/]+\.go):(\d+)")


def _line(path: str, number: int) -> str:
    return (SOURCE / path).read_text(encoding="utf-8").splitlines()[number - 1]


@pytest.mark.parametrize(
    ("path", "number", "text"), CITED, ids=[f"{p.rsplit('/', 1)[1]}:{n}" for p, n, _ in CITED]
)
def test_the_cited_line_of_kuberay_says_what_the_operator_relies_on(
    path: str, number: int, text: str
) -> None:
    assert text in _line(path, number)


def test_every_kuberay_line_the_code_cites_is_checked_here() -> None:
    checked = {(path, number) for path, number, _ in CITED}
    unchecked = []
    for citing in CITING:
        for file, number in CITATION.findall(citing.read_text(encoding="utf-8")):
            matches = [path for path, _, _ in CITED if path.endswith(file)]
            if not any((path, int(number)) in checked for path in matches):
                unchecked.append(f"{citing.relative_to(ROOT)}: {file}:{number}")
    assert unchecked == []


def test_an_unchecked_citation_is_found() -> None:
    assert CITATION.findall("(common/job.go:25, rayjob_controller.go:1-9)") == [
        ("common/job.go", "25"),
        ("rayjob_controller.go", "1"),
    ]
