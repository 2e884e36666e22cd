"""After `helm install`, the notes say how to get KubeRay and what to run next."""

import pytest

from tests.charts.helm import CHART, run_helm


def _notes(*settings: str) -> str:
    result = run_helm(
        "install", "kd", str(CHART), "--dry-run=client", "--namespace=ops", *(f"--set={s}" for s in settings)
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.split("NOTES:", 1)[1]


def test_the_notes_say_how_to_install_kuberay_and_watch_jobs() -> None:
    notes = _notes()
    assert "helm install kuberay-operator kuberay/kuberay-operator" in notes
    assert "kubectl -n NAMESPACE get dj -w" in notes
    assert "kubectl -n ops rollout status deployment/kd-kubedistill" in notes
    assert "It watches DistillationJobs in every namespace." in notes


@pytest.mark.parametrize(
    ("settings", "line"),
    [
        (("rbac.scope=namespace", "watchNamespaces={ml,research}"), "kubectl -n ml get dj -w"),
        (("rbac.scope=namespace",), "kubectl -n ops get dj -w"),
        (("peering.name=kubedistill",), "needs kopf's peering CRDs"),
        (("image.runtime.tag=1.2.3",), "Ray pods run ghcr.io/kubedistill/runtime:1.2.3"),
    ],
    ids=["watched-namespaces", "release-namespace", "peering", "runtime-image"],
)
def test_the_notes_follow_the_values(settings: tuple[str, ...], line: str) -> None:
    assert line in _notes(*settings)
