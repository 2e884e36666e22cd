"""Mistakes in the surroundings of the generation phase, caught before any actor starts or any request is
sent: each one a `field: problem` line (see `kubedistill.runtime.trainer.preflight`)."""

import socket
import urllib.request
from collections.abc import Mapping
from urllib.parse import SplitResult, urlsplit

from kubedistill.api.job import DistillationJob

CONNECT_TIMEOUT_SECONDS = 10.0


def check_generation(
    job: DistillationJob, environ: Mapping[str, str], timeout: float = CONNECT_TIMEOUT_SECONDS
) -> list[str]:
    """The endpoint's API key is in the environment and something listens at its baseUrl."""
    generation = job.spec.generation
    endpoint = generation.endpoint if generation else None
    if endpoint is None:
        return []
    if endpoint.api_key is not None and not environ.get(endpoint.api_key.env):
        where = (
            "set spec.generation.endpoint.apiKey.secretKeyRef"
            if "KUBERNETES_SERVICE_HOST" in environ
            else (f"export {endpoint.api_key.env}")
        )
        return [
            f"spec.generation.endpoint.apiKey.env: the environment variable {endpoint.api_key.env} (the API "
            f"key) is not set; {where}"
        ]
    url = urlsplit(endpoint.base_url)
    port = url.port or (443 if url.scheme == "https" else 80)
    proxy = proxy_for(url)
    where = f"{url.hostname}:{port}"
    if proxy is not None:
        variable, proxy_url = proxy
        # The requests go through the proxy (aiohttp's trust_env): it is what must answer here; whether
        # it reaches the endpoint shows in the first request.
        url = urlsplit(proxy_url)
        port = url.port or (443 if url.scheme == "https" else 80)
        where = f"{url.hostname}:{port}, the proxy {variable} names for {where}"
    try:
        socket.create_connection((url.hostname, port), timeout=timeout).close()
    except OSError as error:
        reason = error.strerror or type(error).__name__
        problem = f"nothing answers at {where} ({reason} within {timeout:g} s)"
        return [f"spec.generation.endpoint.baseUrl: {problem}"]
    return []


def check_templates(job: DistillationJob) -> list[str]:
    """Each step's templateFile reads and holds its kind's placeholders (in the pods, where it is mounted)."""
    from kubedistill.runtime.generation.steps import TemplateProblem, step_template

    problems = []
    for index, step in enumerate(job.spec.generation.steps if job.spec.generation else []):
        try:
            step_template(step, index)
        except TemplateProblem as problem:
            problems.append(str(problem))
    return problems


def proxy_for(url: SplitResult) -> tuple[str, str] | None:
    """(variable, proxy URL) that requests to `url` go through: read from the environment as the client
    reads it (aiohttp's trust_env calls the same `urllib.request.getproxies` and `proxy_bypass`, aiohttp 3.14
    `helpers.py:324-336`): the lowercase name wins, NO_PROXY exempts hosts."""
    proxy = urllib.request.getproxies().get(url.scheme)
    if proxy is None or url.hostname is None or urllib.request.proxy_bypass(url.hostname):
        return None
    return f"{url.scheme.upper()}_PROXY", proxy
