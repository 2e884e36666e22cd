"""Rendering a job whose responses are generated first (spec.generation): the endpoint's API key reaches the
Ray head as a Secret reference and no other pod or object, and a teacher that generates gets its pods even
under sft."""

from typing import Any

import yaml

from kubedistill.operator.render import render
from kubedistill.operator.settings import RenderSettings
from tests.operator.manifests import small_job

SETTINGS = RenderSettings("registry.test/runtime:generation")
ENDPOINT = {
    "baseUrl": "https://api.example.com/v1",
    "model": "hosted",
    "apiKey": {"env": "HOSTED_API_KEY", "secretKeyRef": {"name": "hosted-teacher", "key": "api-key"}},
}


def _containers(rayjob: dict[str, Any]) -> dict[str, dict[str, Any]]:
    cluster = rayjob["spec"]["rayClusterSpec"]
    pods = {"head": cluster["headGroupSpec"]["template"]}
    pods |= {group["groupName"]: group["template"] for group in cluster["workerGroupSpecs"]}
    return {name: pod["spec"]["containers"][0] for name, pod in pods.items()}


def test_the_api_key_is_a_secret_reference_on_the_head_only() -> None:
    job = small_job({"mode": "sft", "teacher": None, "generation": {"endpoint": ENDPOINT}})
    config_map, rayjob = render(job, SETTINGS)
    env = {name: container.get("env", []) for name, container in _containers(rayjob).items()}
    key_env = [var for var in env["head"] if var["name"] == "HOSTED_API_KEY"]
    assert key_env == [
        {
            "name": "HOSTED_API_KEY",
            "valueFrom": {"secretKeyRef": {"name": "hosted-teacher", "key": "api-key"}},
        }
    ]
    assert set(env) == {"head", "student"}
    assert "HOSTED_API_KEY" not in {var["name"] for var in env["student"]}
    (manifest,) = config_map["data"].values()
    endpoint = yaml.safe_load(manifest)["spec"]["generation"]["endpoint"]
    assert endpoint["apiKey"] == ENDPOINT["apiKey"], "the ConfigMap names the Secret, holds no key"


def test_a_job_without_a_secret_reference_renders_no_key_variable() -> None:
    endpoint = {**ENDPOINT, "apiKey": {"env": "HOSTED_API_KEY"}}
    _, rayjob = render(
        small_job({"mode": "sft", "teacher": None, "generation": {"endpoint": endpoint}}), SETTINGS
    )
    for container in _containers(rayjob).values():
        assert "HOSTED_API_KEY" not in {var["name"] for var in container.get("env", [])}


def test_an_sft_job_whose_teacher_generates_gets_teacher_pods() -> None:
    _, rayjob = render(small_job({"mode": "sft", "generation": {}}), SETTINGS)
    groups = {group["groupName"] for group in rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"]}
    assert groups == {"teacher", "student"}
    _, plain = render(small_job({"mode": "sft", "teacher": None}), SETTINGS)
    assert {group["groupName"] for group in plain["spec"]["rayClusterSpec"]["workerGroupSpecs"]} == {
        "student"
    }
