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
SGLANG_CHAT = "sglang/srt/entrypoints/openai/serving_chat.py"
SGLANG_COMPLETIONS = "sglang/srt/entrypoints/openai/serving_completions.py"
TRL_SERVER = "experimental/server_distillation/server_distillation_trainer.py"

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
    # spec.generation.topLogprobs: what is asked, what SGLang sends back, that transformers serve ignores it,
    # and TRL's sparse loss that runtime/losses/sparse.py follows.
    ("openai", "3.63.0", "types/chat/completion_create_params.py", 182, 182, "logprobs: Optional[bool]"),
    ("openai", "3.63.0", "types/chat/completion_create_params.py", 424, 430, "An integer between 0 and 20"),
    ("sglang", "0.5.23", SGLANG_CHAT, 1372, 1374, "top_logprobs_num=request.top_logprobs or 0"),
    ("sglang", "0.5.23", SGLANG_CHAT, 3062, 3124, "token_bytes = token_id_to_bytes(tokenizer, token_id)"),
    ("sglang", "0.5.23", "sglang/srt/entrypoints/openai/utils.py", 96, 123, "_BYTE_DECODER.get(ch)"),
    ("transformers", "5.25.0", "cli/serving/chat_completion.py", 70, 88, '"top_logprobs",'),
    ("transformers", "5.25.0", "cli/serving/chat_completion.py", 70, 88, "ignored, with a warning"),
    ("trl", "1.16.0", TRL_SERVER, 28, 69, "def _jsd_divergence("),
    ("trl", "1.16.0", TRL_SERVER, 72, 82, "def _add_tail_bucket("),
    ("trl", "1.16.0", TRL_SERVER, 79, 79, "torch.clamp(log_sum, max=-1e-7)"),
    ("trl", "1.16.0", TRL_SERVER, 500, 542, "def _compute_server_forward_kl_loss("),
    # spec.generation.scoreAnswers: SGLang scores a token-id prompt for echo with logprobs, generates at
    # least one token, and names a byte-level fragment as latin-1.
    ("sglang", "0.5.23", SGLANG_COMPLETIONS, 77, 81, "Echo is not compatible with logprobs"),
    ("sglang", "0.5.23", SGLANG_COMPLETIONS, 88, 92, "logprob_start_len = 0"),
    ("sglang", "0.5.23", SGLANG_COMPLETIONS, 98, 103, 'prompt_kwargs = {"input_ids": prompt}'),
    ("sglang", "0.5.23", SGLANG_PROTOCOL, 372, 372, "prompt: Union[List[int]"),
    ("sglang", "0.5.23", SGLANG_PROTOCOL, 448, 452, "max_tokens must be positive"),
    ("sglang", "0.5.23", "sglang/srt/entrypoints/openai/utils.py", 177, 203, "render them as latin-1"),
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
