"""Every pod a rendered job makes (Ray head, workers, KubeRay's submitter) meets the Kubernetes "restricted"
Pod Security Standard, so it runs in a namespace labelled `pod-security.kubernetes.io/enforce: restricted`.

The checks are the standard's own controls, baseline and restricted, as written at
https://kubernetes.io/docs/concepts/security/pod-security-standards/ (policy version v1.33). The submitter
pod is the rendered `submitterPodTemplate`, or, without one, the default KubeRay builds (GetSubmitterTemplate,
ray-operator/controllers/ray/common/job.go:215-227 at feeaf72f: a container with the head's image and
nothing else).
"""

from collections.abc import Iterator
from typing import Any

import pytest

from kubedistill.api.job import DistillationJob
from kubedistill.operator.render import render_rayjob
from kubedistill.operator.settings import RenderSettings
from tests.operator.manifests import GOLDEN_IMAGE, example_jobs, golden_cases, golden_job, small_job

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
            problems.append(f"{where}: capabilities may add only NET_BIND_SERVICE")
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
    """Every pod template the job's RayJob makes: head, worker groups and the submitter."""
    rayjob = render_rayjob(job, RenderSettings(GOLDEN_IMAGE))
    cluster = rayjob["spec"]["rayClusterSpec"]
    head = cluster["headGroupSpec"]["template"]["spec"]
    pods = {"head": head}
    pods |= {group["groupName"]: group["template"]["spec"] for group in cluster["workerGroupSpecs"]}
    kuberay_default = {"containers": [{"name": "ray-job-submitter", "image": head["containers"][0]["image"]}]}
    pods["submitter"] = rayjob["spec"].get("submitterPodTemplate", {"spec": kuberay_default})["spec"]
    return pods


JOBS = example_jobs() + [(f"golden/{case.name}", golden_job(case)) for case in golden_cases()]


@pytest.mark.parametrize(("name", "job"), JOBS, ids=[name for name, _ in JOBS])
def test_every_pod_of_a_rendered_job_meets_the_restricted_pod_security_standard(
    name: str, job: DistillationJob
) -> None:
    for pod_name, pod in pods_of(job).items():
        assert restricted_violations(pod) == [], f"{name}: the {pod_name} pod"


def test_the_submitter_pod_gets_what_the_jobs_pods_get() -> None:
    cluster = {
        "image": "registry.example.com/private/runtime:1",
        "imagePullSecrets": [{"name": "registry"}],
        "serviceAccountName": "distill",
        "nodeSelector": {"pool": "h100"},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}],
        "priorityClassName": "high",
    }
    pods = pods_of(small_job({"cluster": cluster}))
    submitter = pods["submitter"]
    for key, value in cluster.items():
        if key != "image":
            assert submitter[key] == pods["head"][key] == value, key
    (container,) = submitter["containers"]
    assert container["image"] == cluster["image"]
    assert "command" not in container, "KubeRay sets its own `ray job submit` command"
    assert submitter["restartPolicy"] == "Never"


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
