"""A hosted teacher's log-probabilities as sparse targets in the student's vocabulary.

An OpenAI-compatible endpoint names tokens by their text and their UTF-8 `bytes` (openai-python
`types/chat/chat_completion_token_logprob.py`; SGLang 0.5.23 recovers a byte-level BPE token's true bytes
from its id, `srt/entrypoints/openai/serving_chat.py:3062-3124`), never by id. Sparse KD is a
same-vocabulary method, so each token is mapped to the student's id with those bytes: `vocabulary_bytes`
gives every student id its bytes (an added token its content; a byte-level BPE piece through GPT-2's byte
decoder, as SGLang's `token_id_to_bytes`, `srt/entrypoints/openai/utils.py:96-123`; any other piece its
decoded text). A response maps only when every sampled and top token has one id, and when the student's
tokenizer writes the response's text with exactly the sampled ids: otherwise the teacher did not share the
student's vocabulary (or sampled a split the student never produces), and the positions would not line up.
"""

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any


@dataclass(frozen=True)
class TokenLogprobs:
    """One response token as the endpoint returned it."""

    token: bytes
    """Its UTF-8 bytes."""
    logprob: float
    top: tuple[tuple[bytes, float], ...]
    """The k most likely tokens and their log-probabilities, most likely first."""


@dataclass(frozen=True)
class SparseTargets:
    """What training reads: the response as the student's ids, with the teacher's top-k at each."""

    ids: list[int]
    logprobs: list[float]
    """The teacher's log-probability of each sampled token."""
    top_ids: list[list[int]]
    top_logprobs: list[list[float]]

    def to_json(self) -> dict[str, Any]:
        return {
            "ids": self.ids,
            "logprobs": self.logprobs,
            "topIds": self.top_ids,
            "topLogprobs": self.top_logprobs,
        }

    @staticmethod
    def from_json(data: Mapping[str, Any]) -> "SparseTargets":
        return SparseTargets(data["ids"], data["logprobs"], data["topIds"], data["topLogprobs"])


class Unmapped(ValueError):
    """A response whose tokens are not the student's; the message says which token and why."""


def token_logprobs_of(content: Sequence[Mapping[str, Any]]) -> list[TokenLogprobs]:
    """`choices[0].logprobs.content` of a chat completion; a token without `bytes` (allowed by the API
    when a token has no byte form) falls back to its text."""

    def raw(entry: Mapping[str, Any]) -> bytes:
        data = entry.get("bytes")
        return bytes(data) if data is not None else str(entry["token"]).encode("utf-8")

    return [
        TokenLogprobs(
            raw(entry),
            float(entry["logprob"]),
            tuple((raw(top), float(top["logprob"])) for top in entry.get("top_logprobs") or []),
        )
        for entry in content
    ]


def vocabulary_bytes(tokenizer: Any) -> dict[bytes, int | None]:
    """Every token's bytes -> its id; None where two ids have the same bytes (no way to tell them apart)."""
    added = {index: token.content for index, token in tokenizer.added_tokens_decoder.items()}
    byte_level = _is_byte_level(tokenizer)
    decoder = _byte_decoder()
    table: dict[bytes, int | None] = {}
    for piece, index in tokenizer.get_vocab().items():
        if index in added:
            data = added[index].encode("utf-8")
        elif byte_level and all(char in decoder for char in piece):
            data = bytes(decoder[char] for char in piece)
        else:
            data = tokenizer.decode([index]).encode("utf-8")
        table[data] = None if data in table and table[data] != index else index
    return table


def sparse_targets(
    tokens: Sequence[TokenLogprobs], tokenizer: Any, table: Mapping[bytes, int | None]
) -> SparseTargets:
    """The response in the student's ids, or `Unmapped`."""

    def id_of(data: bytes, what: str) -> int:
        index = table.get(data)
        if index is None:
            why = "is not" if data not in table else "is more than one token"
            raise Unmapped(f"{what} {data!r} {why} in the student's vocabulary")
        return index

    ids = [id_of(token.token, f"sampled token {i}") for i, token in enumerate(tokens)]
    text = b"".join(token.token for token in tokens).decode("utf-8", errors="replace")
    written = tokenizer.encode(text, add_special_tokens=False)
    if written != ids:
        first = next(
            (i for i, (a, b) in enumerate(zip(written, ids, strict=False)) if a != b),
            min(len(written), len(ids)),
        )
        raise Unmapped(
            f"the student's tokenizer writes the response with other tokens (from token {first}: "
            f"{written[first : first + 3]} instead of {ids[first : first + 3]})"
        )
    top_ids = [
        [id_of(data, f"top token of position {i}") for data, _ in token.top] for i, token in enumerate(tokens)
    ]
    return SparseTargets(
        ids,
        [token.logprob for token in tokens],
        top_ids,
        [[logprob for _, logprob in token.top] for token in tokens],
    )


def scored_targets(
    logprobs: Mapping[str, Any],
    ids: Sequence[int],
    positions: Sequence[int],
    k: int,
    table: Mapping[bytes, int | None],
) -> SparseTargets:
    """The teacher's scores of `ids` (the token ids sent as the prompt) at `positions`, from a completion's
    `choices[0].logprobs` with `echo`: the legacy form, one entry per prompt token (`tokens`,
    `token_logprobs`, `top_logprobs` as {token: logprob}). vLLM names each token `token_id:<id>` when asked
    (`return_tokens_as_token_ids`, vLLM `entrypoints/openai/completion/protocol.py` CompletionRequest) and
    may add the scored token to its top (k+1 entries); SGLang names them by text, a byte-level fragment as
    latin-1, one character per byte (0.5.23 `srt/entrypoints/openai/utils.py:177-203`), which the student's
    `table` maps back. The scored tokens are the ids sent, so only the top tokens need mapping. A fragment of
    a tokenizer SGLang does not take for byte-level is U+FFFD (`utils.py:193-199`), and fragments then share
    one key: such a token names none, and is left out of the top, its mass counted in the tail."""
    token_logprobs, tops = logprobs["token_logprobs"], logprobs["top_logprobs"]
    if len(token_logprobs) < len(ids) or len(tops) < len(ids):
        raise ValueError(f"scores of {len(token_logprobs)} tokens for a prompt of {len(ids)}")

    def id_of(token: str, position: int) -> int | None:
        if token.startswith("token_id:"):
            return int(token.removeprefix("token_id:"))
        index = table.get(token.encode("utf-8"))
        if index is None and all(ord(char) < 256 for char in token):
            index = table.get(token.encode("latin-1"))
        if index is None and "\ufffd" not in token:
            raise Unmapped(f"top token {token!r} at position {position} is not one token of the student's")
        return index

    top_ids: list[list[int]] = []
    top_logprobs: list[list[float]] = []
    for position in positions:
        ranked = sorted(((float(value), token) for token, value in tops[position].items()), reverse=True)[:k]
        named = [(id_of(token, position), value) for value, token in ranked]
        top_ids.append([index for index, _ in named if index is not None])
        top_logprobs.append([value for index, value in named if index is not None])
    return SparseTargets(
        [ids[position] for position in positions],
        [float(token_logprobs[position]) for position in positions],
        top_ids,
        top_logprobs,
    )


def _is_byte_level(tokenizer: Any) -> bool:
    """The tokenizer stores its pieces in GPT-2's printable-byte alphabet (a ByteLevel decoder)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return False
    decoder = json.loads(backend.to_str()).get("decoder") or {}
    kinds = [decoder.get("type")] + [part.get("type") for part in decoder.get("decoders") or []]
    return "ByteLevel" in kinds


@cache
def _byte_decoder() -> dict[str, int]:
    """GPT-2's printable character -> byte (`bytes_to_unicode`, inverted)."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return {chr(code): byte for byte, code in zip(printable, codes, strict=True)}
