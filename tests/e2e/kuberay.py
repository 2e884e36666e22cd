"""KubeRay and the kubelet for one RayJob, on this machine: they run what the operator rendered.

The head pod's container is read as rendered (its env, `fieldRef`s included, its volume mounts and its
trainer's metrics port) and the RayJob's `entrypoint` is run as a subprocess with exactly that
environment, the way the head's Ray runs it as the job's driver. It runs the one submission mode the
operator renders, HTTPMode, as KubeRay does (kuberay feeaf72f): no submitter pod; Initializing with the
cluster's name (rayjob_controller.go:916 starts the attempt's clock), Running once the cluster is up,
before anything is submitted (rayjob_controller.go:236: only K8sJobMode makes a submitter Job there,
rayjob_controller.go:230); then, the job not being found on the head, KubeRay posts it to the dashboard
(rayjob_controller.go:305, rayjob_controller.go:1315) and copies the Ray job's status, RUNNING, then
SUCCEEDED with Complete, or FAILED with Failed and reason AppFailed, the message being Ray's
(rayjob_controller.go:356).

What differs from a cluster, and why: a kubelet bind-mounts each volume at its mountPath; this one cannot
write to paths such as /etc/kubedistill, so it gives each mount a host directory and hands the process
that directory wherever an argument of the entrypoint names a path under the mount (the job's manifest is
the only such argument). A PersistentVolumeClaim is bound to the host directory the test names for it, and
the test mounts it at that same path, so the paths inside the manifest need no translation. Cluster DNS
resolves the head Service that KubeRay creates for the cluster (`<cluster>-head-svc`) to loopback.

A pod has its own network namespace, so its metrics port is its own; a process here shares the host's with
every other test. The kubelet therefore gives the head a free host port in place of the rendered one, in
the variable the pod names it with (`KUBEDISTILL_METRICS_PORT`, which must hold the container's
`trainer-metrics` port, else a cluster's scrape would miss too), and the DNS connects the Service's port to
that host port.
"""

import asyncio
import contextlib
import os
import random
import shlex
import socket
import string
import sys
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp.abc import AbstractResolver, ResolveResult

from kubedistill.api.telemetry import METRICS_PORT_ENV
from kubedistill.operator.pods import TRAINER_METRICS_PORT_NAME
from tests.operator.harness import CONFIGMAPS, Cluster

KubeObject = dict[str, Any]
SUPPORTED_FIELD_REFS = ("metadata.namespace", "metadata.name", "status.podIP")


class ClusterDns(AbstractResolver):
    """The cluster's DNS, as far as the operator asks it: the head Services created so far, on loopback,
    each with its ports mapped to the host ports its pod was given."""

    def __init__(self) -> None:
        self.services: dict[str, dict[int, int]] = {}

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        if host not in self.services:
            raise OSError(f"no Service {host} in the cluster's DNS")
        ports = self.services[host]
        if port not in ports:
            raise OSError(f"Service {host} has no port {port} (it has {sorted(ports)})")
        result = ResolveResult(
            hostname=host, host="127.0.0.1", port=ports[port], family=socket.AF_INET, proto=0, flags=0
        )
        return [result]

    async def close(self) -> None:
        return None


@dataclass(frozen=True)
class HeadProcess:
    """The head container as a process: what runs, with which environment, and its metrics port, as the
    container's (what the Service exposes) and as the host port the process is given instead."""

    args: list[str]
    env: dict[str, str]
    metrics_port: int
    host_metrics_port: int


def head_process(
    rayjob: KubeObject,
    config_maps: Mapping[str, KubeObject],
    claims: Mapping[str, Path],
    root: Path,
    pod_name: str,
) -> HeadProcess:
    """The entrypoint and environment of the rendered head pod; its volumes are materialised under `root`."""
    template = rayjob["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]
    pod = template["spec"]
    (container,) = pod["containers"]
    # Without a command, KubeRay starts `ray start --head` in the container (the driver's host).
    assert "command" not in container and "args" not in container, container
    volumes = {volume["name"]: volume for volume in pod.get("volumes", [])}
    host_paths = {
        mount["mountPath"]: _materialise(volumes[mount["name"]], config_maps, claims, root)
        for mount in container.get("volumeMounts", [])
    }
    namespace = rayjob["metadata"]["namespace"]
    fields = {"metadata.namespace": namespace, "metadata.name": pod_name, "status.podIP": "127.0.0.1"}
    env = {var["name"]: _value(var, fields) for var in container.get("env", [])}
    (metrics_port,) = (
        p["containerPort"] for p in container["ports"] if p["name"] == TRAINER_METRICS_PORT_NAME
    )
    assert env.get(METRICS_PORT_ENV) == str(metrics_port), (
        f"the trainer serves on {METRICS_PORT_ENV}={env.get(METRICS_PORT_ENV)}, "
        f"the pod exposes containerPort {metrics_port}"
    )
    host_port = _free_port()
    env[METRICS_PORT_ENV] = str(host_port)
    args = [_on_host(arg, host_paths) for arg in shlex.split(rayjob["spec"]["entrypoint"])]
    return HeadProcess(args=args, env=env, metrics_port=metrics_port, host_metrics_port=host_port)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _materialise(
    volume: KubeObject, config_maps: Mapping[str, KubeObject], claims: Mapping[str, Path], root: Path
) -> Path:
    if "configMap" in volume:
        directory = root / "volumes" / volume["name"]
        directory.mkdir(parents=True, exist_ok=True)
        for key, text in config_maps[volume["configMap"]["name"]]["data"].items():
            (directory / key).write_text(text, encoding="utf-8")
        return directory
    if "persistentVolumeClaim" in volume:
        return claims[volume["persistentVolumeClaim"]["claimName"]]
    if "emptyDir" in volume:
        directory = root / "volumes" / volume["name"]
        directory.mkdir(parents=True, exist_ok=True)
        return directory
    raise NotImplementedError(f"volume {volume['name']}: this kubelet knows configMap, PVC and emptyDir")


def _value(var: KubeObject, fields: Mapping[str, str]) -> str:
    if "value" in var:
        return str(var["value"])
    field = var["valueFrom"]["fieldRef"]["fieldPath"]
    if field not in fields:
        raise NotImplementedError(f"env {var['name']}: fieldRef {field} (known: {SUPPORTED_FIELD_REFS})")
    return fields[field]


def _on_host(arg: str, host_paths: Mapping[str, Path]) -> str:
    for mount_path in sorted(host_paths, key=len, reverse=True):
        if arg == mount_path or arg.startswith(mount_path.rstrip("/") + "/"):
            return str(host_paths[mount_path]) + arg[len(mount_path.rstrip("/")) :]
    return arg


@dataclass
class KubeRay:
    cluster: Cluster
    dns: ClusterDns
    claims: Mapping[str, Path]
    root: Path

    async def run(self, rayjob_name: str) -> int:
        """Run the RayJob to its end, as KubeRay and the kubelet would; the entrypoint's exit status."""
        rayjob = self.cluster.rayjob(rayjob_name)
        assert rayjob is not None, f"no RayJob {rayjob_name}"
        mode = rayjob["spec"].get("submissionMode", "K8sJobMode")
        if mode != "HTTPMode" or "submitterPodTemplate" in rayjob["spec"]:
            raise NotImplementedError(f"this KubeRay runs HTTPMode without a submitter pod, not {mode}")
        namespace = rayjob["metadata"]["namespace"]
        suffix = "".join(random.choices(string.ascii_lowercase + string.digits, k=5))
        ray_cluster = f"{rayjob_name}-{suffix}"  # utils.GenerateRayClusterName
        await self.cluster.set_rayjob_status(
            rayjob_name,
            jobDeploymentStatus="Initializing",
            jobId=f"{rayjob_name}-{suffix}",
            rayClusterName=ray_cluster,
            startTime="2026-12-01T10:00:00Z",
        )
        config_maps = {name: self.cluster.stored(CONFIGMAPS, name) for name in _config_map_names(rayjob)}
        head = head_process(rayjob, config_maps, self.claims, self.root, pod_name=f"{ray_cluster}-head-x1")
        service = f"{ray_cluster}-head-svc.{namespace}.svc"
        self.dns.services[service] = {head.metrics_port: head.host_metrics_port}
        await self.cluster.set_rayjob_status(
            rayjob_name, jobDeploymentStatus="Running", dashboardURL=f"{service}.cluster.local:8265"
        )
        async with self._running(head) as process:
            await self.cluster.set_rayjob_status(rayjob_name, jobStatus="RUNNING")
            code = await process.wait()
        if code == 0:
            final = {"jobDeploymentStatus": "Complete", "jobStatus": "SUCCEEDED"}
        else:
            final = {
                "jobDeploymentStatus": "Failed",
                "jobStatus": "FAILED",
                "reason": "AppFailed",
                "message": f"the driver exited with {code}",
            }
        await self.cluster.set_rayjob_status(rayjob_name, **final, endTime="2026-12-01T10:05:00Z")
        return code

    @contextlib.asynccontextmanager
    async def _running(self, head: HeadProcess) -> AsyncIterator[asyncio.subprocess.Process]:
        home = self.root / "home"
        home.mkdir(parents=True, exist_ok=True)
        # What the runtime image provides besides the pod's env: its PATH (with `kubedistill` on it), and
        # its Python's packages: in the SGLang tier the SGLang layer on PYTHONPATH (the image has SGLang).
        image_env = {"PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}", "HOME": str(home)}
        if "PYTHONPATH" in os.environ:
            image_env["PYTHONPATH"] = os.environ["PYTHONPATH"]
        with (self.root / "head.log").open("wb") as log:
            process = await asyncio.create_subprocess_exec(
                *head.args, env={**image_env, **head.env}, cwd=home, stdout=log, stderr=log
            )
        try:
            yield process
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()

    def log(self) -> str:
        return (self.root / "head.log").read_text(encoding="utf-8", errors="replace")


def _config_map_names(rayjob: KubeObject) -> list[str]:
    pod = rayjob["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    return [volume["configMap"]["name"] for volume in pod.get("volumes", []) if "configMap" in volume]
