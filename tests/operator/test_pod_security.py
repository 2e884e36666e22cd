"""Every pod a rendered job makes (Ray head and workers; KubeRay submits the job over HTTP, so there is no
submitter pod) meets the Kubernetes "restricted" Pod Security Standard, so it runs in a namespace labelled
`pod-security.kubernetes.io/enforce: restricted`; the one exception is asked for by name
(`spec.cluster.worker.ipcLock`, for RDMA), and breaks that control alone, on the workers alone.

The checks are the standard's own controls, baseline and restricted, as written at
https://kubernetes.io/docs/concepts/security/pod-security-standards/ (policy version v1.33).
"""

from collections.abc import Iterator
from typing import Any

import pytest

from kubedistill.api.job import DistillationJob
from kubedistill.operator.render import render_rayjob
from kubedistill.operator.settings import RenderSettings
from tests.operator.manifests import GOLDEN_IMAGE, example_jobs, golden_cases, golden_job

PodSpec = dict[str, Any]

RESTRICTED_VOLUME_TYPES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}
BASELINE_CAPABILITIES = {
    "AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD", "NET_BIND_SERVICE",
    "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT",
}  # fmt: skip
SAFE_SYSCTLS = {
    "kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
}  # fmt: skip
ADDED_CAPABILITY = "capabilities may add only NET_BIND_SERVICE"
SELINUX_TYPES = {"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}


def _containers(pod: PodSpec) -> Iterator[dict[str, Any]]:
    for key in ("initContainers", "containers", "ephemeralContainers"):
        yield from pod.get(key) or []


def restricted_violations(pod: PodSpec) -> list[str]:
    """Every control of the baseline and restricted profiles this pod spec fails, by field."""
    problems = []
    pod_context = pod.get("securityContext") or {}
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(field):
            problems.append(f"spec.{field}: host namespaces are not allowed")
    for sysctl in pod_context.get("sysctls") or []:
        if sysctl["name"] not in SAFE_SYSCTLS:
            problems.append(f"spec.securityContext.sysctls: {sysctl['name']} is not a safe sysctl")
    for volume in pod.get("volumes") or []:
        kinds = set(volume) - {"name"}
        if not kinds <= RESTRICTED_VOLUME_TYPES:
            problems.append(f"spec.volumes[{volume['name']}]: {', '.join(sorted(kinds))} is not allowed")
    problems += _context_problems("spec.securityContext", pod_context)
    pod_non_root = pod_context.get("runAsNonRoot") is True
    pod_seccomp = (pod_context.get("seccompProfile") or {}).get("type") in ("RuntimeDefault", "Localhost")
    for container in _containers(pod):
        where = f"container {container['name']}"
        context = container.get("securityContext") or {}
        problems += _context_problems(f"{where}: securityContext", context)
        if context.get("privileged"):
            problems.append(f"{where}: privileged")
        if context.get("procMount", "Default") != "Default":
            problems.append(f"{where}: procMount must be Default")
        if context.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{where}: allowPrivilegeEscalation must be false")
        capabilities = context.get("capabilities") or {}
        if "ALL" not in (capabilities.get("drop") or []):
            problems.append(f"{where}: capabilities must drop ALL")
        added = set(capabilities.get("add") or [])
        if not added <= {"NET_BIND_SERVICE"} or not added <= BASELINE_CAPABILITIES:
            problems.append(f"{where}: {ADDED_CAPABILITY}")
        if context.get("runAsNonRoot") is False or not (pod_non_root or context.get("runAsNonRoot") is True):
            problems.append(f"{where}: runAsNonRoot must be true (pod or container)")
        seccomp = (context.get("seccompProfile") or {}).get("type")
        if not (pod_seccomp and seccomp is None) and seccomp not in ("RuntimeDefault", "Localhost"):
            problems.append(f"{where}: seccompProfile must be RuntimeDefault or Localhost (pod or container)")
        for port in container.get("ports") or []:
            if port.get("hostPort"):
                problems.append(f"{where}: hostPort {port['hostPort']}")
    return problems


def _context_problems(where: str, context: dict[str, Any]) -> list[str]:
    problems = []
    if (context.get("windowsOptions") or {}).get("hostProcess"):
        problems.append(f"{where}.windowsOptions.hostProcess: not allowed")
    if context.get("runAsUser") == 0:
        problems.append(f"{where}.runAsUser: 0 (root) is not allowed")
    if (context.get("seccompProfile") or {}).get("type") == "Unconfined":
        problems.append(f"{where}.seccompProfile: Unconfined is not allowed")
    if (context.get("appArmorProfile") or {}).get("type") == "Unconfined":
        problems.append(f"{where}.appArmorProfile: Unconfined is not allowed")
    selinux = context.get("seLinuxOptions") or {}
    if selinux.get("type", "") not in SELINUX_TYPES or selinux.get("user") or selinux.get("role"):
        problems.append(f"{where}.seLinuxOptions: only the container types, without user or role")
    return problems


def pods_of(job: DistillationJob) -> dict[str, PodSpec]:
    """Every pod template the job's RayJob makes: the head and the worker groups."""
    rayjob = render_rayjob(job, RenderSettings(GOLDEN_IMAGE))
    assert rayjob["spec"]["submissionMode"] == "HTTPMode", "KubeRay makes no submitter pod"
    cluster = rayjob["spec"]["rayClusterSpec"]
    pods = {"head": cluster["headGroupSpec"]["template"]["spec"]}
    return pods | {group["groupName"]: group["template"]["spec"] for group in cluster["workerGroupSpecs"]}


JOBS = example_jobs() + [(f"golden/{case.name}", golden_job(case)) for case in golden_cases()]
RESTRICTED_JOBS = [(name, job) for name, job in JOBS if not job.spec.cluster.worker.ipc_lock]
IPC_LOCK_JOBS = [(name, job) for name, job in JOBS if job.spec.cluster.worker.ipc_lock]


@pytest.mark.parametrize(("name", "job"), RESTRICTED_JOBS, ids=[name for name, _ in RESTRICTED_JOBS])
def test_every_pod_of_a_rendered_job_meets_the_restricted_pod_security_standard(
    name: str, job: DistillationJob
) -> None:
    for pod_name, pod in pods_of(job).items():
        assert restricted_violations(pod) == [], f"{name}: the {pod_name} pod"


@pytest.mark.parametrize(("name", "job"), IPC_LOCK_JOBS, ids=[name for name, _ in IPC_LOCK_JOBS])
def test_ipc_lock_is_the_only_control_a_job_asking_for_it_breaks_and_only_on_its_workers(
    name: str, job: DistillationJob
) -> None:
    for pod_name, pod in pods_of(job).items():
        expected = [] if pod_name == "head" else [f"container ray-worker: {ADDED_CAPABILITY}"]
        assert restricted_violations(pod) == expected, f"{name}: the {pod_name} pod"
    assert "IPC_LOCK" not in BASELINE_CAPABILITIES, "the baseline profile forbids it too: privileged only"


def test_an_example_asks_for_ipc_lock() -> None:
    assert IPC_LOCK_JOBS


@pytest.mark.parametrize(
    ("pod", "control"),
    [
        ({"hostNetwork": True, "containers": []}, "spec.hostNetwork"),
        ({"volumes": [{"name": "h", "hostPath": {"path": "/"}}], "containers": []}, "hostPath"),
        (
            {"securityContext": {"runAsNonRoot": True}, "containers": [{"name": "c"}]},
            "allowPrivilegeEscalation",
        ),
        (
            {
                "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
                "containers": [
                    {
                        "name": "c",
                        "securityContext": {
                            "allowPrivilegeEscalation": False,
                            "capabilities": {"drop": ["ALL"], "add": ["SYS_ADMIN"]},
                        },
                    }
                ],
            },
            "NET_BIND_SERVICE",
        ),
        ({"containers": [{"name": "c", "securityContext": {"privileged": True}}]}, "privileged"),
        ({"containers": [{"name": "c"}]}, "seccompProfile"),
        ({"containers": [{"name": "c", "ports": [{"containerPort": 80, "hostPort": 80}]}]}, "hostPort"),
    ],
    ids=[
        "host-network",
        "host-path",
        "privilege-escalation",
        "added-capability",
        "privileged",
        "no-seccomp",
        "host-port",
    ],
)
def test_the_checks_catch_what_the_standard_forbids(pod: PodSpec, control: str) -> None:
    assert any(control in problem for problem in restricted_violations(pod)), restricted_violations(pod)
