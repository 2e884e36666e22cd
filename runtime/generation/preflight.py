"""Mistakes in the surroundings of the generation phase, caught before any actor starts or any request is
sent: each one a `field: problem` line (see `kubedistill.runtime.trainer.preflight`)."""

import socket
from collections.abc import Mapping
from urllib.parse import urlsplit

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
    try:
        socket.create_connection((url.hostname, port), timeout=timeout).close()
    except OSError as error:
        reason = error.strerror or type(error).__name__
        return [
            f"spec.generation.endpoint.baseUrl: nothing answers at {url.hostname}:{port} ({reason} within "
            f"{timeout:g} s)"
        ]
    return []
