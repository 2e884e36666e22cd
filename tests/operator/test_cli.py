"""`kubedistill render` and `kubedistill operator`, as a user runs them."""

import asyncio
import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import aiohttp
import pytest
import yaml
from typer.testing import CliRunner

from kubedistill.cli import app
from tests.operator.harness import Cluster, eventually, job_manifest
from tests.operator.manifests import GOLDEN_IMAGE, golden_cases
from tests.test_import_boundaries import BLOCK_HEAVY_IMPORTS

runner = CliRunner()


def test_render_prints_exactly_the_golden_objects() -> None:
    case = golden_cases()[0]
    result = runner.invoke(app, ["render", str(case / "job.yaml"), "--image", GOLDEN_IMAGE])
    assert result.exit_code == 0, result.output
    assert result.stdout == (case / "rendered.yaml").read_text(encoding="utf-8")


@pytest.mark.parametrize(
    ("env", "image"),
    [({"KUBEDISTILL_RUNTIME_IMAGE": "registry.example.com/rt:7"}, "registry.example.com/rt:7"), ({}, None)],
    ids=["from-the-environment", "versioned-default"],
)
def test_render_takes_the_default_image_from_the_environment(env: dict[str, str], image: str | None) -> None:
    job = next(case for case in golden_cases() if case.name == "sft-from-a-file") / "job.yaml"
    result = runner.invoke(app, ["render", str(job)], env={"KUBEDISTILL_RUNTIME_IMAGE": "", **env})
    assert result.exit_code == 0, result.output
    rayjob = list(yaml.safe_load_all(result.stdout))[1]
    head = rayjob["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert head["image"] == (image or "ghcr.io/kubedistill/runtime:0.1.0")


def test_render_and_operator_work_in_the_operator_image_without_torch_or_ray() -> None:
    job = golden_cases()[0] / "job.yaml"
    code = BLOCK_HEAVY_IMPORTS + textwrap.dedent(
        f"""
        import sys
        from typer.testing import CliRunner
        from kubedistill.cli import app
        rendered = CliRunner().invoke(app, ["render", {str(job)!r}])
        helped = CliRunner().invoke(app, ["operator", "--help"])
        sys.exit(rendered.exit_code or helped.exit_code or (0 if "kind: RayJob" in rendered.output else 3))
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr + result.stdout


def test_render_names_the_field_of_an_invalid_job(tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job_manifest(mode="onPolicy")), encoding="utf-8")
    result = runner.invoke(app, ["render", str(path)])
    assert result.exit_code == 1
    assert "spec.rollout: required when spec.mode is onPolicy" in result.output


@pytest.mark.parametrize(
    "args",
    [[], ["--namespace", "ml", "--all-namespaces"], ["-A", "--peering", "p", "--standalone"]],
    ids=["no-scope", "both-scopes", "peering-and-standalone"],
)
def test_operator_refuses_contradictory_options(args: list[str]) -> None:
    result = runner.invoke(app, ["operator", *args])
    assert result.exit_code == 2
    assert "--" in result.output


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def test_the_operator_command_serves_probes_and_metrics_and_creates_rayjobs(
    cluster: Cluster, tmp_path: Path
) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "test", "cluster": {"server": str(cluster.server.url).rstrip("/")}}],
                "users": [{"name": "test", "user": {"token": "test-token"}}],
                "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test"}}],
                "current-context": "test",
            }
        ),
        encoding="utf-8",
    )
    liveness, metrics = _free_port(), _free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith("KUBERNETES_")}
    env["KUBECONFIG"] = str(kubeconfig)
    process = await asyncio.create_subprocess_exec(
        Path(sys.executable).parent / "kubedistill",
        "operator",
        "--namespace",
        "ml",
        "--standalone",
        "--liveness-port",
        str(liveness),
        "--metrics-port",
        str(metrics),
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with aiohttp.ClientSession() as http:
            await _wait_ok(http, f"http://127.0.0.1:{liveness}/healthz")
            await cluster.create_job(job_manifest())
            await eventually(
                lambda: cluster.condition("Created")["status"] == "True", timeout=20, what="created"
            )
            # The handler writes the condition before it returns, and the run is counted when it returns:
            # the page may lag the condition by a moment, so it is read until the count shows.
            counted = 'kubedistill_operator_reconciles_total{handler="create",result="success"} 1.0'
            deadline = asyncio.get_running_loop().time() + 10
            while True:
                async with http.get(f"http://127.0.0.1:{metrics}/metrics") as response:
                    text = await response.text()
                if counted in text or asyncio.get_running_loop().time() > deadline:
                    break
                await asyncio.sleep(0.05)
        assert counted in text
        assert any(
            request.headers.get("Authorization") == "Bearer test-token"
            for request in cluster.server
            if request.headers.get("User-Agent", "").startswith("kopf/")
        ), "kopf logs in with the kubeconfig's credentials"
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(process.communicate(), timeout=30)
    assert process.returncode == 0, stderr.decode()[-2000:]


async def _wait_ok(http: aiohttp.ClientSession, url: str) -> None:
    for _ in range(300):
        try:
            async with http.get(url) as response:
                if response.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.1)
    raise AssertionError(f"{url} never answered")
