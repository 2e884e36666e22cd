from typing import Any

import kmock
import pytest

from tests.operator.apiserver import ApiServer
from tests.operator.harness import Cluster, declare_resources


@pytest.fixture
def kmock_options(kmock_options: dict[str, Any]) -> dict[str, Any]:
    return {**kmock_options, "cls": ApiServer}


@pytest.fixture
def cluster(kmock: kmock.KubernetesEmulator) -> Cluster:
    """The operator tests' emulated API server, with what discovery must show."""
    declare_resources(kmock)
    return Cluster(kmock)
