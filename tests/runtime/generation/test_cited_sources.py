"""The lines of other projects' source that the generation phase's comments cite (file:line), checked
against that source: the installed aiohttp, openai and transformers, and the pinned SGLang wheel. A cited
release that moved must be read again, and the comment beside the code updated with it: for another
installed release this checks only that the cited text is still in the file."""

import importlib.metadata
import importlib.util
from pathlib import Path

import pytest

from tests.runtime.engines.sglang.wheel_source import pinned_sglang_version, pinned_wheel

SGLANG_PROTOCOL = "sglang/srt/entrypoints/openai/protocol.py"

CITED = [
    # (package, release cited, file, first line, last line, text within those lines)
    ("aiohttp", "3.14.5", "connector.py", 287, 287, "limit: int = 100,"),
    ("aiohttp", "3.14.5", "connector.py", 631, 645, "await self._wait_for_available_connection(key, traces)"),
    ("aiohttp", "3.14.5", "client.py", 703, 708, "real_timeout.total,"),
    ("aiohttp", "3.14.5", "client.py", 813, 817, "get_env_proxy_for_url, url"),
    ("aiohttp", "3.14.5", "helpers.py", 324, 336, "proxy_bypass(url.host)"),
    ("openai", "3.63.0", "types/chat/completion_create_params.py", 196, 204, "max_tokens: Optional[int]"),
    ("openai", "3.63.0", "types/chat/completion_create_params.py", 196, 204, "compatible with"),
    ("transformers", "5.25.0", "cli/serving/model_manager.py", 515, 515, "Server is pinned to"),
    (
        "transformers",
        "5.25.0",
        "cli/serving/chat_completion.py",
        276,
        277,
        'int(body["max_completion_tokens"])',
    ),
    (
        "transformers",
        "5.25.0",
        "cli/serving/chat_completion.py",
        228,
        233,
        "completion_tokens=completion_tokens,",
    ),
    ("transformers", "5.25.0", "cli/serving/chat_completion.py", 254, 254, "self._get_finish_reason("),
    ("transformers", "5.25.0", "cli/serving/utils.py", 832, 834, "set_torch_seed(seed)"),
    ("transformers", "5.25.0", "cli/serving/utils.py", 1279, 1285, 'return "length"'),
    ("sglang", "0.5.23", SGLANG_PROTOCOL, 1214, 1214, "self.max_completion_tokens or self.max_tokens"),
    ("sglang", "0.5.23", SGLANG_PROTOCOL, 1293, 1297, "reasoning_content: Optional[str] = None"),
    ("sglang", "0.5.23", SGLANG_PROTOCOL, 1307, 1316, '"content_filter", "function_call", "abort"'),
]


def _source(package: str, file: str) -> tuple[str, str]:
    """(release, text) of the installed package's file, or of the pinned SGLang wheel's."""
    if package == "sglang":
        import zipfile

        with zipfile.ZipFile(pinned_wheel()) as wheel:
            return pinned_sglang_version(), wheel.read(file).decode("utf-8")
    spec = importlib.util.find_spec(package)
    assert spec is not None and spec.origin is not None, f"{package} is not installed"
    path = Path(spec.origin).parent / file
    return importlib.metadata.version(package), path.read_text(encoding="utf-8")


@pytest.mark.parametrize(
    ("package", "cited", "file", "first", "last", "text"),
    CITED,
    ids=[f"{package}:{file.rsplit('/', 1)[-1]}:{first}" for package, _, file, first, *_ in CITED],
)
def test_a_cited_line_says_what_the_comment_relies_on(
    package: str, cited: str, file: str, first: int, last: int, text: str
) -> None:
    release, source = _source(package, file)
    if release != cited:
        assert text in source, f"{package} {release} {file} no longer has {text!r}: read it again"
        return
    lines = source.splitlines()[first - 1 : last]
    assert any(text in line for line in lines), f"{package} {release} {file}:{first}-{last}: {lines}"
