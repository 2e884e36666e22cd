from collections.abc import Iterator
from typing import Any

import kmock
import pytest

from kubedistill.operator.rbac import RULES
from tests.operator.apiserver import ApiServer, OwnerReferencesPermissionEnforcement
from tests.operator.harness import Cluster, declare_resources
from tests.operator.rbac_audit import denied, operator_accesses


@pytest.fixture
def kmock_options(kmock_options: dict[str, Any]) -> dict[str, Any]:
    return {**kmock_options, "cls": ApiServer}


@pytest.fixture
def cluster(kmock: kmock.KubernetesEmulator) -> Iterator[Cluster]:
    """The API server, admitting what the operator's RBAC rules allow (OpenShift's admission plugins);
    afterwards, every request the operator made must be one its RBAC rules allow."""
    declare_resources(kmock)
    kmock.interceptors.append(OwnerReferencesPermissionEnforcement(RULES))
    yield Cluster(kmock)
    assert not denied(operator_accesses(kmock), RULES), "requests the operator's RBAC rules do not allow"
