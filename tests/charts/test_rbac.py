"""The chart grants exactly the rules of `kubedistill.operator.rbac` for the way its values start the
operator: cluster-wide or per watched namespace, with or without a peering; no more, no less."""

from collections import Counter
from collections.abc import Iterable
from typing import Any

import pytest

from kubedistill.operator.rbac import Rule, rules_for
from tests.charts.helm import CHART, NAMESPACE, Rendered, template

CI = CHART / "ci"
WATCHED = ["ml-team-a", "ml-team-b"]

Grant = tuple[str, str, tuple[str, ...]]

MODES = [
    pytest.param((), True, False, ["*"], id="cluster-standalone"),
    pytest.param((CI / "peering-values.yaml",), True, True, ["*"], id="cluster-peering"),
    pytest.param((CI / "namespaced-values.yaml",), False, False, WATCHED, id="namespaced-standalone"),
    pytest.param(
        (CI / "namespaced-peering-values.yaml",), False, True, ["ml-team-a"], id="namespaced-peering"
    ),
]


def _grants(rules: Iterable[dict[str, Any]]) -> Counter[Grant]:
    return Counter(
        (group, resource, tuple(sorted(rule["verbs"])))
        for rule in rules
        for group in rule["apiGroups"]
        for resource in rule["resources"]
    )


def _expected(rules: Iterable[Rule]) -> Counter[Grant]:
    return Counter((rule.api_group, rule.resource, tuple(sorted(rule.verbs))) for rule in rules)


def _roles_by_namespace(rendered: Rendered) -> dict[str, dict[str, Any]]:
    cluster_roles = rendered.of_kind("ClusterRole")
    roles = rendered.of_kind("Role")
    assert not (cluster_roles and roles), "a chart grants either cluster-wide or per namespace"
    if cluster_roles:
        (role,) = cluster_roles
        return {"*": role}
    return {role["metadata"]["namespace"]: role for role in roles}


@pytest.mark.parametrize(("values", "clusterwide", "peering", "namespaces"), MODES)
def test_the_granted_rules_are_the_operators_rules(
    values: tuple, clusterwide: bool, peering: bool, namespaces: list[str]
) -> None:
    roles = _roles_by_namespace(template(values))
    assert sorted(roles) == sorted(namespaces)
    expected = _expected(rules_for(clusterwide=clusterwide, peering=peering))
    for namespace, role in roles.items():
        assert _grants(role["rules"]) == expected, namespace


@pytest.mark.parametrize(("values", "clusterwide", "peering", "namespaces"), MODES)
def test_each_role_is_bound_to_the_operators_service_account(
    values: tuple, clusterwide: bool, peering: bool, namespaces: list[str]
) -> None:
    rendered = template(values)
    account = rendered.one("ServiceAccount")["metadata"]
    bindings = rendered.of_kind("ClusterRoleBinding" if clusterwide else "RoleBinding")
    roles = _roles_by_namespace(rendered)
    assert len(bindings) == len(roles)
    for binding in bindings:
        namespace = binding["metadata"].get("namespace", "*")
        assert binding["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": roles[namespace]["kind"],
            "name": roles[namespace]["metadata"]["name"],
        }
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": account["name"], "namespace": NAMESPACE}
        ]


@pytest.mark.parametrize(("values", "clusterwide", "peering", "namespaces"), MODES)
def test_a_peering_object_exists_where_the_operator_looks_for_it(
    values: tuple, clusterwide: bool, peering: bool, namespaces: list[str]
) -> None:
    rendered = template(values)
    cluster_peerings = rendered.of_kind("ClusterKopfPeering")
    peerings = rendered.of_kind("KopfPeering")
    if not peering:
        assert not cluster_peerings and not peerings
    elif clusterwide:
        assert [p["metadata"]["name"] for p in cluster_peerings] == ["kubedistill"]
        assert cluster_peerings[0]["apiVersion"] == "kopf.dev/v1" and not peerings
    else:
        assert sorted(p["metadata"]["namespace"] for p in peerings) == namespaces
        assert {p["metadata"]["name"] for p in peerings} == {"kubedistill"} and not cluster_peerings


def test_namespace_scope_without_watched_namespaces_watches_the_release_namespace() -> None:
    rendered = template(settings=("rbac.scope=namespace",))
    assert list(_roles_by_namespace(rendered)) == [NAMESPACE]
