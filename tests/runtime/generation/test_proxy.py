"""A cluster whose egress goes through an HTTP proxy reaches a hosted teacher through it: the requests and the
pre-flight go where `HTTP(S)_PROXY` says, and `NO_PROXY` exempts hosts, as curl and urllib read them.

The proxy is a real one, proxy.py (the PyPI package of that name, a test dependency), on loopback; its
access log shows what went through it."""

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from kubedistill.runtime.generation.phase import run_generation
from kubedistill.runtime.generation.preflight import check_generation
from tests.runtime.generation.jobs import endpoint_job, prompt_file
from tests.runtime.generation.scripted_server import scripted_server

ENV = {"TEST_API_KEY": "sk-test"}
PROXY_VARIABLES = ("http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY")
STARTUP_SECONDS = 20
ONE_PROCESS = ("--num-workers", "1", "--num-acceptors", "1")
"""proxy.py's worker processes: one is plenty here, and each costs a start on two shared cores."""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass(frozen=True)
class Proxy:
    url: str
    log: Path

    def forwarded(self, path: str) -> int:
        """Requests the proxy forwarded whose target ends in `path`."""
        return sum(f"{path} - " in line for line in self.log.read_text().splitlines())

    def forwarded_at_least(self, path: str, count: int, within: float = 10.0) -> int:
        """`forwarded(path)` once it reaches `count`, or after `within` seconds: proxy.py writes a request's
        access line when the client's connection closes, from its own worker process, a moment after the
        client is done (a clean clone's CI read the log before the lines were there)."""
        deadline = time.monotonic() + within
        while (seen := self.forwarded(path)) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        return seen


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    port = _free_port()
    log = tmp_path_factory.mktemp("proxy") / "proxy.log"
    with log.open("wb") as output:
        server = subprocess.Popen(
            [sys.executable, "-m", "proxy", "--hostname", "127.0.0.1", "--port", str(port), *ONE_PROCESS],
            stdout=output,
            stderr=subprocess.STDOUT,
            cwd=log.parent,  # not the repository root, whose operator/ would shadow the standard library's
        )
        try:
            deadline = time.monotonic() + STARTUP_SECONDS
            while True:
                assert server.poll() is None, log.read_text()
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    assert time.monotonic() < deadline, log.read_text()
                    time.sleep(0.05)
            yield Proxy(f"http://127.0.0.1:{port}", log)
        finally:
            server.terminate()
            server.wait(timeout=30)


@pytest.fixture
def no_proxy_settings(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_requests_go_through_the_proxy_the_environment_names(
    proxy: Proxy, no_proxy_settings: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    no_proxy_settings.setenv("HTTP_PROXY", proxy.url)
    prompts = prompt_file(tmp_path / "prompts.jsonl", ["cow", "dog", "owl"])
    with scripted_server({}) as server:
        path = server.url.removeprefix("http://") + "/chat/completions"
        before = proxy.forwarded(path)
        result = run_generation(endpoint_job(prompts, server.url), tmp_path / "out", ENV)
    assert result.report["generated"] == 3
    assert proxy.forwarded_at_least(path, before + 3) - before == 3


def test_no_proxy_exempts_the_endpoint(
    proxy: Proxy, no_proxy_settings: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    no_proxy_settings.setenv("HTTP_PROXY", proxy.url)
    no_proxy_settings.setenv("NO_PROXY", "localhost,127.0.0.1")
    prompts = prompt_file(tmp_path / "prompts.jsonl", ["cow"])
    with scripted_server({}) as server:
        path = server.url.removeprefix("http://") + "/chat/completions"
        run_generation(endpoint_job(prompts, server.url), tmp_path / "out", ENV)
    assert proxy.forwarded(path) == 0
    assert sum(server.asked.values()) == 1


def test_the_preflight_checks_the_proxy_an_endpoint_is_reached_through(
    proxy: Proxy, no_proxy_settings: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # A name only the cluster's proxy could resolve: the pre-flight must not look it up itself.
    job = endpoint_job(tmp_path / "unread.jsonl", "https://teacher.invalid/v1")
    no_proxy_settings.setenv("HTTPS_PROXY", proxy.url)
    assert check_generation(job, ENV) == []
    closed = _free_port()
    no_proxy_settings.setenv("HTTPS_PROXY", f"http://127.0.0.1:{closed}")
    assert check_generation(job, ENV, timeout=2) == [
        f"spec.generation.endpoint.baseUrl: nothing answers at 127.0.0.1:{closed}, the proxy HTTPS_PROXY "
        "names for teacher.invalid:443 (Connection refused within 2 s)"
    ]
    no_proxy_settings.setenv("NO_PROXY", ".invalid")
    (exempt,) = check_generation(job, ENV, timeout=2)
    assert exempt.startswith("spec.generation.endpoint.baseUrl: nothing answers at teacher.invalid:443 ("), (
        "NO_PROXY: the endpoint itself is checked"
    )
