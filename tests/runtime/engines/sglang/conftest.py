import pytest

from tests.runtime.engines.sglang.wheel_source import SGLangSource, pinned_source


@pytest.fixture(scope="session")
def sglang_source() -> SGLangSource:
    """The pinned SGLang release's source (downloaded to .venv/wheels/ on first use)."""
    return pinned_source()
