"""Credentials: one `kubernetes` client configuration that both kopf and the operator's own calls use."""

import os
from collections.abc import Mapping

import kopf
from kubernetes.aio.client import ApiClient, Configuration
from kubernetes.aio.config import (
    ConfigException,
    load_incluster_config,  # pyright: ignore[reportUnknownVariableType]  # unannotated in kubernetes
    load_kube_config,  # pyright: ignore[reportUnknownVariableType]
)


async def connect(environ: Mapping[str, str] = os.environ) -> ApiClient:
    """Like controller-runtime: `$KUBECONFIG` if set, else the pod's service account, else ~/.kube/config."""
    configuration = Configuration()
    if environ.get("KUBECONFIG"):
        await load_kube_config(config_file=environ["KUBECONFIG"], client_configuration=configuration)
        return ApiClient(configuration)
    try:
        load_incluster_config(client_configuration=configuration)
    except ConfigException:
        await load_kube_config(client_configuration=configuration)
    return ApiClient(configuration)


async def connection_info(configuration: Configuration) -> kopf.ConnectionInfo:
    """kopf's view of the same credentials; asked again on a 401, so a rotated token is re-read."""
    header = await configuration.get_api_key_with_prefix("BearerToken", alias="authorization")
    scheme, _, token = (header or "").partition(" ")
    return kopf.ConnectionInfo(
        server=configuration.host,
        ca_path=configuration.ssl_ca_cert,
        ca_data=configuration.ca_cert_data,
        insecure=not configuration.verify_ssl,
        username=configuration.username,
        password=configuration.password,
        scheme=scheme or None,
        token=token or None,
        certificate_path=configuration.cert_file,
        private_key_path=configuration.key_file,
    )
