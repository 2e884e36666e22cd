"""The operator's settings come from the environment once, at start; rendering only gets values."""

import pytest

from kubedistill.operator.settings import (
    DEFAULT_METRICS_URL_TEMPLATE,
    OperatorSettings,
    RenderSettings,
    settings_from_env,
)


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, OperatorSettings(render=RenderSettings("ghcr.io/kubedistill/runtime:0.1.0"))),
        (
            {
                "KUBEDISTILL_RUNTIME_IMAGE": "registry.example.com/runtime:2",
                "KUBEDISTILL_SCRAPE_PERIOD_SECONDS": "30",
                "KUBEDISTILL_SCRAPE_TIMEOUT_SECONDS": "2.5",
                "KUBEDISTILL_METRICS_URL_TEMPLATE": "http://{cluster}-head-svc.{namespace}.svc.example:{port}/m",
                "KUBEDISTILL_PEERING_LIFETIME_SECONDS": "20",
            },
            OperatorSettings(
                render=RenderSettings("registry.example.com/runtime:2"),
                scrape_period_seconds=30.0,
                scrape_timeout_seconds=2.5,
                metrics_url_template="http://{cluster}-head-svc.{namespace}.svc.example:{port}/m",
                peering_lifetime_seconds=20,
            ),
        ),
        (
            {"KUBEDISTILL_RUNTIME_IMAGE": ""},
            OperatorSettings(render=RenderSettings("ghcr.io/kubedistill/runtime:0.1.0")),
        ),
    ],
    ids=["defaults", "all-set", "empty-means-unset"],
)
def test_settings_from_the_environment(environ: dict[str, str], expected: OperatorSettings) -> None:
    assert settings_from_env(environ) == expected


def test_the_default_metrics_url_is_the_head_service_kuberay_creates() -> None:
    url = DEFAULT_METRICS_URL_TEMPLATE.format(
        cluster="demo-raycluster-x7k2p", namespace="ml", job="demo", port=8080
    )
    assert url == "http://demo-raycluster-x7k2p-head-svc.ml.svc:8080/metrics"
