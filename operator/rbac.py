"""The Kubernetes permissions the operator needs: the source of the Helm chart's (Cluster)Role.

Every rule is exercised by the operator tests, which also check that each request the operator made was
allowed by these rules. kopf runs with resource and namespace scanning off, so it needs no access to
CustomResourceDefinitions or Namespaces (discovery of API groups is allowed to everyone). One rule serves
no request of its own: admission checks it when a child is created (`distillationjobs/finalizers`).
"""

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum


class Need(StrEnum):
    ALWAYS = "always"
    CLUSTER_PEERING = "clusterPeering"
    """Watching all namespaces with a peering (`--peering`, or kopf's `default` peering)."""
    NAMESPACED_PEERING = "namespacedPeering"
    """Watching named namespaces with a peering."""


@dataclass(frozen=True)
class Rule:
    api_group: str
    resource: str
    verbs: tuple[str, ...]
    need: Need = Need.ALWAYS
    why: str = ""

    def allows(self, api_group: str, resource: str, verb: str) -> bool:
        return (self.api_group, self.resource) == (api_group, resource) and verb in self.verbs


RULES: tuple[Rule, ...] = (
    Rule(
        "kubedistill.io",
        "distillationjobs",
        ("get", "list", "watch", "patch"),
        why="watch jobs; kopf's progress annotations and finalizer; read a job a RayJob event names",
    ),
    Rule("kubedistill.io", "distillationjobs/status", ("patch",), why="phase, conditions, progress"),
    Rule(
        "kubedistill.io",
        "distillationjobs/finalizers",
        ("update",),
        why="children's ownerReferences block owner deletion, which the OwnerReferencesPermissionEnforcement "
        "admission plugin (OpenShift's default) allows only with this",
    ),
    Rule(
        "ray.io",
        "rayjobs",
        ("get", "list", "watch", "create", "patch"),
        why="create the RayJob, adopt it after a conflict, mirror its status, apply suspend and TTL",
    ),
    Rule("", "configmaps", ("get", "create"), why="the job's manifest for the pods; read back on edits"),
    Rule("", "events", ("create",), why="Warning events: invalid spec, ignored edits, name conflicts"),
    Rule("kopf.dev", "clusterkopfpeerings", ("list", "watch", "patch"), Need.CLUSTER_PEERING),
    Rule("kopf.dev", "kopfpeerings", ("list", "watch", "patch"), Need.NAMESPACED_PEERING),
)


def rules_for(*, clusterwide: bool, peering: bool) -> list[Rule]:
    """The rules an operator started this way needs."""
    needs = {Need.ALWAYS}
    if peering:
        needs.add(Need.CLUSTER_PEERING if clusterwide else Need.NAMESPACED_PEERING)
    return [rule for rule in RULES if rule.need in needs]


def allowed(rules: Iterable[Rule], api_group: str, resource: str, verb: str) -> bool:
    return any(rule.allows(api_group, resource, verb) for rule in rules)
