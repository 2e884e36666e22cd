"""Which RBAC permission each request the operator made needed, read from the API server's log."""

from collections.abc import Iterable
from typing import Any, NamedTuple

from kubedistill.api.job import GROUP, KIND, PLURAL
from kubedistill.operator.rbac import Rule, allowed
from kubedistill.operator.runner import USER_AGENT
from tests.operator.kmock_adapter import Action

VERBS = {
    Action.LIST: "list",
    Action.WATCH: "watch",
    Action.FETCH: "get",
    Action.CREATE: "create",
    Action.UPDATE: "patch",
    Action.DELETE: "delete",
}


class Access(NamedTuple):
    api_group: str
    resource: str
    verb: str


def operator_accesses(requests: Iterable[Any]) -> list[Access]:
    """Resource requests by kopf or the operator's client; discovery (/api, /apis/...) needs no RBAC."""
    accesses = []
    for request in requests:
        agent = request.headers.get("User-Agent", "")
        if not agent.startswith(("kopf/", USER_AGENT)):
            continue
        resource = request.resource
        if resource is None or resource.plural is None:
            continue
        name = f"{resource.plural}/{request.subresource}" if request.subresource else resource.plural
        accesses.append(Access(resource.group or "", name, VERBS[request.action]))
        if request.action == Action.CREATE:
            accesses.extend(_owner_accesses(request.data))
    return accesses


def _owner_accesses(obj: Any) -> list[Access]:
    """What admission authorises for a created object (OwnerReferencesPermissionEnforcement, kubernetes
    `plugin/pkg/admission/gc/gc_admission.go`): a blocking ownerReference needs `update` on the owner's
    `finalizers`. Only our own kind owns anything the operator creates."""
    if not isinstance(obj, dict):
        return []
    return [
        Access(GROUP, f"{PLURAL}/finalizers", "update")
        for owner in obj.get("metadata", {}).get("ownerReferences", [])
        if owner.get("blockOwnerDeletion") and owner.get("kind") == KIND
    ]


def denied(accesses: Iterable[Access], rules: Iterable[Rule]) -> set[Access]:
    rules = list(rules)
    return {access for access in accesses if not allowed(rules, *access)}


def unused(rules: Iterable[Rule], accesses: Iterable[Access]) -> set[tuple[str, str, str]]:
    seen = set(accesses)
    return {
        (rule.api_group, rule.resource, verb)
        for rule in rules
        for verb in rule.verbs
        if Access(rule.api_group, rule.resource, verb) not in seen
    }
