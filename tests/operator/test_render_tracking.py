"""Rendering a job with experiment trackers (spec.tracking): each tracker's credential reaches the Ray head,
where the driver writes to the trackers, as a Secret reference, and no other pod or object holds more than
the Secret's name."""

from typing import Any

import yaml

from kubedistill.operator.render import render
from kubedistill.operator.settings import RenderSettings
from tests.operator.manifests import small_job

SETTINGS = RenderSettings("registry.test/runtime:tracking")
TRACKING = {
    "tensorboard": {},
    "mlflow": {
        "trackingUri": "https://mlflow.example.com",
        "credentials": {"env": "MLFLOW_TRACKING_TOKEN", "secretKeyRef": {"name": "mlflow", "key": "token"}},
    },
    "wandb": {
        "project": "distill",
        "credentials": {"env": "WANDB_API_KEY", "secretKeyRef": {"name": "wandb", "key": "api-key"}},
    },
}


def _env(rayjob: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    cluster = rayjob["spec"]["rayClusterSpec"]
    pods = {"head": cluster["headGroupSpec"]["template"]}
    pods |= {group["groupName"]: group["template"] for group in cluster["workerGroupSpecs"]}
    return {name: pod["spec"]["containers"][0].get("env", []) for name, pod in pods.items()}


def test_each_trackers_credential_is_a_secret_reference_on_the_head_only() -> None:
    config_map, rayjob = render(small_job({"tracking": TRACKING}), SETTINGS)
    env = _env(rayjob)
    credentials = [var for var in env["head"] if var["name"] in ("MLFLOW_TRACKING_TOKEN", "WANDB_API_KEY")]
    assert credentials == [
        {"name": "MLFLOW_TRACKING_TOKEN", "valueFrom": {"secretKeyRef": {"name": "mlflow", "key": "token"}}},
        {"name": "WANDB_API_KEY", "valueFrom": {"secretKeyRef": {"name": "wandb", "key": "api-key"}}},
    ]
    for group, variables in env.items():
        if group != "head":
            assert not {"MLFLOW_TRACKING_TOKEN", "WANDB_API_KEY"} & {var["name"] for var in variables}, group
    (manifest,) = config_map["data"].values()
    rendered = yaml.safe_load(manifest)["spec"]["tracking"]
    for tracker in ("mlflow", "wandb"):
        credentials = rendered[tracker]["credentials"]
        assert credentials == TRACKING[tracker]["credentials"], "the ConfigMap names the Secrets only"


def test_a_credential_without_a_secret_reference_renders_no_variable() -> None:
    tracking = {"wandb": {"project": "distill", "credentials": {"env": "WANDB_API_KEY"}}}
    _, rayjob = render(small_job({"tracking": tracking}), SETTINGS)
    for variables in _env(rayjob).values():
        assert "WANDB_API_KEY" not in {var["name"] for var in variables}
