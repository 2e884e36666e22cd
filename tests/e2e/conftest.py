"""The end-to-end tests run the operator against the API server emulator (the operator tests' fixtures)
and the tiny models of the runtime tests."""

from tests.operator.conftest import cluster, kmock_options
from tests.runtime.conftest import tiny

__all__ = ["cluster", "kmock_options", "tiny"]
