"""The operator under test, a real kopf operator, against the emulated API server on loopback.

`Cluster` plays the other actors: the user (kubectl: create, edit, delete a job) and KubeRay (setting a
RayJob's status). It reads the API server's stored objects directly, as assertions do.
"""

import asyncio
import contextlib
import copy
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import kmock
import psutil
import yaml
from aiohttp.abc import AbstractResolver
from kubernetes.aio.client import ApiClient, Configuration

from kubedistill.operator.metrics import OperatorMetrics
from kubedistill.operator.runner import RunOptions, run_operator
from kubedistill.operator.settings import OperatorSettings, RenderSettings
from tests.operator.kmock_adapter import Action

T = TypeVar("T")

NAMESPACE = "ml"
JOBS = "kubedistill.io/v1alpha1/distillationjobs"
RAYJOBS = "ray.io/v1/rayjobs"
CONFIGMAPS = "v1/configmaps"
EVENTS = "v1/events"
CLUSTER_PEERINGS = "kopf.dev/v1/clusterkopfpeerings"
NAMESPACED_PEERINGS = "kopf.dev/v1/kopfpeerings"
ALL_VERBS = {"list", "watch", "get", "create", "patch", "delete"}

STANDALONE = RunOptions(standalone=True)
FAST_SETTINGS = OperatorSettings(
    render=RenderSettings("registry.test/kubedistill-runtime:test"),
    scrape_period_seconds=0.2,
    scrape_timeout_seconds=1.0,
    retry_delay_seconds=0.5,
    # Nothing listens there: a running job's progress is unknown unless a test serves metrics.
    metrics_url_template="http://127.0.0.1:9/metrics",
)


def declare_resources(server: kmock.KubernetesEmulator) -> None:
    """What discovery shows: the job and RayJob CRDs, and the built-ins kopf and the operator touch."""
    resources = server.resources
    resources[JOBS] = kmock.ResourceInfo(
        kind="DistillationJob", namespaced=True, verbs=ALL_VERBS, subresources={"status"}
    )
    resources[RAYJOBS] = kmock.ResourceInfo(
        kind="RayJob", namespaced=True, verbs=ALL_VERBS, subresources={"status"}
    )
    resources[CONFIGMAPS] = kmock.ResourceInfo(kind="ConfigMap", namespaced=True, verbs=ALL_VERBS)
    resources[EVENTS] = kmock.ResourceInfo(kind="Event", namespaced=True, verbs=ALL_VERBS)
    # kopf waits for these to be discoverable before it watches anything, even with scanning off.
    resources["v1/namespaces"] = kmock.ResourceInfo(kind="Namespace", namespaced=False, verbs=ALL_VERBS)
    resources["apiextensions.k8s.io/v1/customresourcedefinitions"] = kmock.ResourceInfo(
        kind="CustomResourceDefinition", namespaced=False, verbs=ALL_VERBS
    )
    resources[CLUSTER_PEERINGS] = kmock.ResourceInfo(
        kind="ClusterKopfPeering", namespaced=False, verbs=ALL_VERBS
    )
    resources[NAMESPACED_PEERINGS] = kmock.ResourceInfo(kind="KopfPeering", namespaced=True, verbs=ALL_VERBS)


def job_manifest(name: str = "demo", **spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "teacher": {"model": "Qwen/Qwen3-8B"},
        "student": {"model": "Qwen/Qwen3-0.6B"},
        "data": {"train": {"path": "/data/train.jsonl"}},
    }
    return {
        "apiVersion": "kubedistill.io/v1alpha1",
        "kind": "DistillationJob",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {**base, **spec},
    }


async def eventually(
    probe: Callable[[], T], *, timeout: float = 10.0, interval: float = 0.02, what: str = ""
) -> T:
    """Poll the stored objects until `probe` returns something truthy (no API calls: not recorded)."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(KeyError, IndexError, TypeError):
            if result := probe():
                return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or probe}")
        await asyncio.sleep(interval)


@dataclass
class Cluster:
    server: kmock.KubernetesEmulator

    def stored(self, resource: str, name: str, namespace: str | None = NAMESPACE) -> dict[str, Any] | None:
        key = (kmock.resource(resource), namespace, name)
        if key not in self.server.objects or self.server.objects[key].deleted:
            return None
        return copy.deepcopy(self.server.objects[key].raw)

    def job(self, name: str = "demo") -> dict[str, Any] | None:
        return self.stored(JOBS, name)

    def status(self, name: str = "demo") -> dict[str, Any]:
        return (self.job(name) or {}).get("status") or {}

    def condition(self, type_: str, name: str = "demo") -> dict[str, Any] | None:
        return next((c for c in self.status(name).get("conditions", []) if c["type"] == type_), None)

    def rayjob(self, name: str = "demo") -> dict[str, Any] | None:
        return self.stored(RAYJOBS, name)

    def config_map(self, name: str = "demo") -> dict[str, Any] | None:
        return self.stored(CONFIGMAPS, f"{name}-spec")

    def events(self) -> list[dict[str, Any]]:
        return [obj.last.raw for key, obj in self.server.objects.items() if key[0] == kmock.resource(EVENTS)]

    def requests(self) -> list[Any]:
        return list(self.server)

    async def create_job(self, manifest: Mapping[str, Any]) -> None:
        namespace = manifest["metadata"]["namespace"]
        async with self.server.post(
            f"/apis/{_path(JOBS)}/namespaces/{namespace}/distillationjobs", json=manifest
        ) as response:
            assert response.status in (200, 201), await response.text()

    async def patch(
        self, resource: str, name: str, patch: Mapping[str, Any], *, subresource: str = ""
    ) -> None:
        plural = resource.rsplit("/", 1)[1]
        url = f"/apis/{_path(resource)}/namespaces/{NAMESPACE}/{plural}/{name}" + (
            f"/{subresource}" if subresource else ""
        )
        headers = {"Content-Type": "application/merge-patch+json"}
        async with self.server.patch(url, json=dict(patch), headers=headers) as response:
            assert response.status == 200, await response.text()

    async def edit_spec(self, patch: Mapping[str, Any], name: str = "demo") -> None:
        await self.patch(JOBS, name, {"spec": dict(patch)})

    async def set_rayjob_status(self, name: str = "demo", **status: Any) -> None:
        """What KubeRay does as the Ray job moves along."""
        await self.patch(RAYJOBS, name, {"status": status}, subresource="status")

    async def delete_rayjob(self, name: str = "demo") -> None:
        """What a user or KubeRay's TTL does to a RayJob."""
        async with self.server.delete(
            f"/apis/{_path(RAYJOBS)}/namespaces/{NAMESPACE}/rayjobs/{name}"
        ) as response:
            assert response.status == 200, await response.text()

    async def delete_job(self, name: str = "demo") -> None:
        async with self.server.delete(
            f"/apis/{_path(JOBS)}/namespaces/{NAMESPACE}/distillationjobs/{name}"
        ) as response:
            assert response.status == 200, await response.text()


def _path(resource: str) -> str:
    return resource.rsplit("/", 1)[0]


@contextlib.asynccontextmanager
async def running_operator(
    server: kmock.KubernetesEmulator,
    options: RunOptions = STANDALONE,
    settings: OperatorSettings = FAST_SETTINGS,
    metrics: OperatorMetrics | None = None,
    resolver: AbstractResolver | None = None,
) -> AsyncIterator[OperatorMetrics]:
    """The operator in a thread of its own, stopped (and joined) on exit; `resolver` resolves the trainers'
    hosts in its scrapes.

    Not a task in the test's loop: on exit kopf cancels every task created while it ran, which would
    include the API server's own request handlers.
    """
    metrics = metrics or OperatorMetrics()
    stop, ready = threading.Event(), threading.Event()
    failure: list[BaseException] = []

    def run() -> None:
        async def main() -> None:
            client = ApiClient(Configuration(host=str(server.url).rstrip("/")))
            await run_operator(
                options,
                settings,
                client=client,
                metrics=metrics,
                stop_flag=stop,
                ready_flag=ready,
                resolver=resolver,
            )

        try:
            asyncio.run(main())
        except BaseException as error:
            failure.append(error)
            ready.set()

    thread = threading.Thread(target=run, name="operator", daemon=True)
    thread.start()
    try:
        assert await asyncio.to_thread(ready.wait, 10), "the operator did not start"
        if failure:
            raise failure[0]
        yield metrics
    finally:
        stop.set()
        await asyncio.to_thread(thread.join, 15)
        assert not thread.is_alive(), "the operator did not stop"
    if failure:
        raise failure[0]


REPOSITORY = Path(__file__).parents[2]
OPERATOR_PROCESS = """
import asyncio, dataclasses, gc, json, signal, sys
from pathlib import Path

import kopf
from kubernetes.aio.client import ApiClient, Configuration

from kubedistill.operator.runner import run_operator
from tests.operator.harness import FAST_SETTINGS, STANDALONE

def report_live_blocks(*_):
    gc.collect()
    written = Path(sys.argv[2] + ".part")
    written.write_text(str(sys.getallocatedblocks()))
    written.replace(sys.argv[2])

signal.signal(signal.SIGUSR1, report_live_blocks)
kopf.configure(verbose=True)
client = ApiClient(Configuration(host=sys.argv[1]))
settings = dataclasses.replace(FAST_SETTINGS, **json.loads(sys.argv[3]))
asyncio.run(run_operator(STANDALONE, settings, client=client))
"""


@dataclass
class OperatorProcess:
    process: subprocess.Popen[bytes]
    blocks_file: Path

    def rss(self) -> int:
        """Resident memory in bytes: what a pod's memory limit sees, allocator warm-up included."""
        return psutil.Process(self.process.pid).memory_info().rss

    async def live_blocks(self) -> int:
        """Memory blocks Python holds after a full collection: what a leak grows, whatever the allocator."""
        self.blocks_file.unlink(missing_ok=True)
        self.process.send_signal(signal.SIGUSR1)
        await eventually(self.blocks_file.exists, what="the operator's count of live blocks")
        return int(self.blocks_file.read_text())


@contextlib.asynccontextmanager
async def operator_process(
    server: kmock.KubernetesEmulator, workdir: Path, settings: Mapping[str, Any] | None = None
) -> AsyncIterator[OperatorProcess]:
    """The operator in a process of its own, so that its memory is its own to measure (its log goes to
    `workdir`); stopped by SIGINT (kopf's graceful stop, as on a pod's SIGTERM), killed if that fails.
    `settings` replace fields of FAST_SETTINGS (plain values only)."""
    url = str(server.url).rstrip("/")
    blocks_file = workdir / "live-blocks"
    with (workdir / "operator.log").open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-c", OPERATOR_PROCESS, url, str(blocks_file), json.dumps(dict(settings or {}))],
            cwd=REPOSITORY,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        await eventually(
            lambda: process.poll() is not None or _watching_jobs(server),
            timeout=60,
            what="the operator process watching jobs",
        )
        assert process.poll() is None, f"the operator process ended at its start; see {workdir}/operator.log"
        yield OperatorProcess(process, blocks_file)
    finally:
        process.send_signal(signal.SIGINT)
        try:
            await asyncio.to_thread(process.wait, 30)
        except subprocess.TimeoutExpired:
            process.kill()
            await asyncio.to_thread(process.wait)
            raise AssertionError("the operator process did not stop on SIGINT") from None


def _watching_jobs(server: kmock.KubernetesEmulator) -> bool:
    return any(
        request.resource == kmock.resource(JOBS)
        and request.action == Action.WATCH
        and request.headers.get("User-Agent", "").startswith("kopf/")
        for request in server
    )


CLI_ENV = {
    "KUBEDISTILL_RUNTIME_IMAGE": FAST_SETTINGS.render.default_image,
    "KUBEDISTILL_SCRAPE_PERIOD_SECONDS": str(FAST_SETTINGS.scrape_period_seconds),
    "KUBEDISTILL_SCRAPE_TIMEOUT_SECONDS": str(FAST_SETTINGS.scrape_timeout_seconds),
    "KUBEDISTILL_METRICS_URL_TEMPLATE": FAST_SETTINGS.metrics_url_template,
}
"""The chart's environment for the operator container, with the fast test settings."""


def kubeconfig(server: kmock.KubernetesEmulator, path: Path) -> Path:
    """A kubeconfig file for the emulator: how `kubedistill operator` finds a cluster outside a pod."""
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "emulator", "cluster": {"server": str(server.url).rstrip("/")}}],
                "users": [{"name": "operator", "user": {"token": "test"}}],
                "contexts": [{"name": "emulator", "context": {"cluster": "emulator", "user": "operator"}}],
                "current-context": "emulator",
            }
        )
    )
    return path


@dataclass
class CliOperator:
    """`kubedistill operator ...` as the chart's container runs it, in a process of its own."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def kill(self) -> None:
        """As when its node is lost: no goodbye to the peering."""
        self.process.kill()
        self.process.wait()


@contextlib.asynccontextmanager
async def cli_operators(
    server: kmock.KubernetesEmulator, workdir: Path, names: Sequence[str], args: Sequence[str], **env: str
) -> AsyncIterator[list[CliOperator]]:
    """Replicas of the operator (`POD_ID` is each one's name, as the chart's fieldRef sets it), killed on
    exit if still running."""
    config = kubeconfig(server, workdir / "kubeconfig")
    command = str(Path(sys.executable).with_name("kubedistill"))
    operators = []
    try:
        for name in names:
            log = workdir / f"{name}.log"
            with log.open("wb") as stream:
                process = subprocess.Popen(
                    [command, "operator", *args],
                    cwd=workdir,
                    env={**os.environ, **CLI_ENV, **env, "KUBECONFIG": str(config), "POD_ID": name},
                    stdout=stream,
                    stderr=subprocess.STDOUT,
                )
            operators.append(CliOperator(name, process, log))
        yield operators
    finally:
        for operator in operators:
            if operator.process.poll() is None:
                operator.process.send_signal(signal.SIGINT)
                try:
                    await asyncio.to_thread(operator.process.wait, 30)
                except subprocess.TimeoutExpired:
                    operator.kill()
