"""An endpoint's log-probabilities mapped to the student's token ids (same vocabulary), and refused where the
student's tokenizer does not write the response with the sampled tokens."""

from typing import Any

import pytest

from kubedistill.runtime.demo.tiny import build_tokenizer
from kubedistill.runtime.generation.logprobs import (
    SparseTargets,
    TokenLogprobs,
    Unmapped,
    sparse_targets,
    token_logprobs_of,
    vocabulary_bytes,
)
from kubedistill.runtime.generation.phase import NO_LOGPROBS, UNMAPPED, with_sparse_targets
from kubedistill.runtime.generation.store import Response

TEXT = "the weather in paris é today<|im_end|>"
"""With a two-byte character (é, two byte-level pieces or one) and the end-of-turn special token."""


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return build_tokenizer(["what is the weather in paris today", "hello there é"], vocab_size=300)


def as_served(tokenizer: Any, ids: list[int], alternatives: int = 2) -> list[dict[str, Any]]:
    """`choices[0].logprobs.content` as an OpenAI-compatible server writes it for these sampled ids: each
    token's text and UTF-8 bytes (here from the tokenizer's own decoding, independent of the byte table),
    and `alternatives` other tokens."""

    def entry(index: int, logprob: float) -> dict[str, Any]:
        text = tokenizer.decode([index])
        return {"token": text, "bytes": list(text.encode("utf-8")), "logprob": logprob}

    return [
        {
            **entry(index, -0.1),
            "top_logprobs": [entry(index, -0.1)]
            + [entry(other, -3.0 - j) for j, other in enumerate(range(30, 30 + alternatives))],
        }
        for index in ids
    ]


def test_the_students_own_tokenisation_maps_back_to_its_ids(tokenizer: Any) -> None:
    ids = tokenizer.encode(TEXT, add_special_tokens=False)
    assert all("\ufffd" not in tokenizer.decode([i]) for i in ids), "whole characters only in this case"
    targets = sparse_targets(
        token_logprobs_of(as_served(tokenizer, ids)), tokenizer, vocabulary_bytes(tokenizer)
    )
    assert targets.ids == ids
    assert targets.top_ids == [[i, 30, 31] for i in ids]
    assert targets.logprobs == [-0.1] * len(ids)
    assert targets.top_logprobs == [[-0.1, -3.0, -4.0]] * len(ids)
    assert SparseTargets.from_json(targets.to_json()) == targets, "the line round-trips"


def test_byte_level_pieces_of_a_character_map_by_their_bytes(tokenizer: Any) -> None:
    """A character split over two tokens: each piece's text is U+FFFD, so only `bytes` tells them apart."""
    table = vocabulary_bytes(tokenizer)
    first, second = (tokenizer.convert_tokens_to_ids(piece) for piece in ("Ã", "©"))  # é = C3 A9
    tokens = [TokenLogprobs(bytes([0xC3]), -0.5, ()), TokenLogprobs(bytes([0xA9]), -0.5, ())]
    if tokenizer.encode("é", add_special_tokens=False) == [first, second]:
        assert sparse_targets(tokens, tokenizer, table).ids == [first, second]
    assert table[bytes([0xC3])] == first and table[bytes([0xA9])] == second


def test_a_split_the_student_never_writes_is_unmapped(tokenizer: Any) -> None:
    """Sampled tokens of the student that its tokenizer writes otherwise: the positions would shift."""
    word = tokenizer.encode("weather", add_special_tokens=False)
    assert len(word) < len("weather"), "merged pieces in this vocabulary"
    letters = [tokenizer.convert_tokens_to_ids(letter) for letter in "weather"]
    with pytest.raises(Unmapped, match="writes the response with other tokens"):
        sparse_targets(
            token_logprobs_of(as_served(tokenizer, letters)), tokenizer, vocabulary_bytes(tokenizer)
        )


def test_a_token_outside_the_students_vocabulary_is_unmapped(tokenizer: Any) -> None:
    served = as_served(tokenizer, tokenizer.encode("hello", add_special_tokens=False))
    served[0]["top_logprobs"][1] = {"token": "zebra", "bytes": list(b"zebra"), "logprob": -2.0}
    with pytest.raises(Unmapped, match="b'zebra' is not in the student's vocabulary"):
        sparse_targets(token_logprobs_of(served), tokenizer, vocabulary_bytes(tokenizer))


def test_the_phase_skips_unmapped_answers_and_answers_without_logprobs(tokenizer: Any) -> None:
    table = vocabulary_bytes(tokenizer)
    ids = tokenizer.encode("hello there", add_special_tokens=False)
    served = token_logprobs_of(as_served(tokenizer, ids))
    kept, reason, _ = with_sparse_targets(Response("hello there", "stop", logprobs=served), tokenizer, table)
    assert reason is None and kept.targets is not None and kept.targets.ids == ids
    assert kept.logprobs is None, "the line keeps the mapped targets only"
    _, reason, detail = with_sparse_targets(Response("hello there", "stop"), tokenizer, table)
    assert reason == NO_LOGPROBS and "no logprobs" in detail
    other = build_tokenizer(["completely different words for another vocabulary"], vocab_size=270)
    _, reason, detail = with_sparse_targets(Response("hello there", "stop", logprobs=served), other, table)
    assert reason == UNMAPPED and "needs the endpoint model's tokenizer as spec.student's" in detail
