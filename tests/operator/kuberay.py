"""What KubeRay does with a rendered RayJob's pods and Services, restated from its source (feeaf72f) for
the tests; `test_kuberay_source.py` checks the lines these functions follow."""

from collections.abc import Mapping

APPLICATION_NAME = "kuberay"
"""utils.ApplicationName, utils/constant.go:126."""
CREATED_BY = "kuberay-operator"
METRICS_PORT = ("metrics", 8080)
"""utils.MetricsPortName and utils.DefaultMetricsPort (utils/constant.go:115, :108): the port KubeRay's
head Service always has, and that KubeRay's PodMonitor and ServiceMonitor samples scrape as Ray's."""


def pod_labels(
    template_labels: Mapping[str, str], node_type: str, cluster: str, group: str
) -> dict[str, str]:
    """labelPod (common/pod.go:1167-1191): KubeRay's labels, then the template's over them, except the
    three it keeps."""
    labels = {
        "ray.io/is-ray-node": "yes",
        "ray.io/cluster": cluster,
        "ray.io/node-type": node_type,
        "ray.io/group": group,
        "ray.io/identifier": f"{cluster}-{node_type}",
        "app.kubernetes.io/name": APPLICATION_NAME,
        "app.kubernetes.io/created-by": CREATED_BY,
    }
    kept = {"ray.io/node-type", "ray.io/group", "ray.io/cluster"}
    return labels | {key: value for key, value in template_labels.items() if key not in kept}


def rayjob_head_service_selector(cluster: str) -> dict[str, str]:
    """The selector of the per-RayJob Service `<rayjob>-head-svc`: BuildHeadServiceForRayJob calls
    BuildServiceForHeadPod with no labels (common/job.go:25), which selects on KubeRay's default head labels
    alone (common/service.go:25-33, :45-54), `app.kubernetes.io/name: kuberay` among them."""
    return {
        "ray.io/cluster": cluster,
        "ray.io/node-type": "head",
        "ray.io/identifier": f"{cluster}-head",
        "app.kubernetes.io/name": APPLICATION_NAME,
        "app.kubernetes.io/created-by": CREATED_BY,
    }


def head_service_ports(container_ports: list[Mapping[str, object]]) -> dict[str, int]:
    """getServicePorts (common/service.go:403-433): the head container's named ports, plus `metrics` on
    8080 when none is named so."""
    ports = {str(port["name"]): int(str(port["containerPort"])) for port in container_ports}
    name, number = METRICS_PORT
    return {name: number} | ports
