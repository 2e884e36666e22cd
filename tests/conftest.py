"""Suite-wide collection order.

`make test` runs on two pytest-xdist workers with whole files kept together (`--dist loadfile`), and a
worker takes files in collection order. Files that start Ray, a real job or pyright take up to minutes
each; collected in alphabetical order, one of them can be the last file left while the other worker sits
idle. Collecting them first leaves the many short files to even out the end. The order within a file, and
every file's own fixtures, are unchanged.
"""

import importlib.util
import os

import pytest

_SLOW_FIXTURES = {"ray_session", "tiny"}
"""Fixtures of the tests that run real jobs: local Ray, and the tiny models and data they train."""
_SLOW_FILES = {"tests/test_lint.py", "tests/test_bad_inputs.py"}
_JOB_FILES = ("tests", "runtime", "trainer")
"""The folder of the slowest files: each runs several whole jobs."""
"""Files without those fixtures that are as slow: pyright over the tree; the installed command's runs."""


SGLANG_TIER = "KUBEDISTILL_SGLANG_TIER"
"""Set by `make test-sglang`: there a test that needs the real SGLang engine fails if SGLang is missing."""


def _gate_sglang_tests(items: list[pytest.Item]) -> None:
    """Tests marked `sglang` run the real engine from the SGLang layer (`make test-sglang`). Outside it they
    are skipped, naming the command; inside it a missing SGLang is an error, so the tier cannot pass by
    skipping."""
    if importlib.util.find_spec("sglang") is not None:
        return
    needing = [item for item in items if item.get_closest_marker("sglang")]
    if needing and os.environ.get(SGLANG_TIER):
        raise pytest.UsageError(
            f"{SGLANG_TIER} is set but sglang is not importable: run `make test-sglang`, which installs the "
            "SGLang layer and puts it on PYTHONPATH"
        )
    for item in needing:
        item.add_marker(pytest.mark.skip(reason="needs the SGLang-on-CPU layer: make test-sglang"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    _gate_sglang_tests(items)
    slow_files = {
        item.path
        for item in items
        if _SLOW_FIXTURES & set(getattr(item, "fixturenames", ()))
        or item.path.relative_to(config.rootpath).as_posix() in _SLOW_FILES
        or item.path.relative_to(config.rootpath).parts[:2] == ("tests", "e2e")
    }
    # Of the slow files, those that run whole jobs (tests/runtime/trainer: a minute or two each, in either
    # tier) first: the longest started first, the shorter ones even out the end.
    trainer = {path for path in slow_files if path.relative_to(config.rootpath).parts[:3] == _JOB_FILES}
    items.sort(key=lambda item: (item.path not in slow_files, item.path not in trainer))
