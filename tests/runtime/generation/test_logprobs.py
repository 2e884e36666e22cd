"""An endpoint's log-probabilities mapped to the student's token ids (same vocabulary), and refused where the
student's tokenizer does not write the response with the sampled tokens; and its scores of a given answer
(scoreAnswers), read from the completion's echoed prompt as vLLM and SGLang write it."""

from typing import Any

import pytest

from kubedistill.api.generation import EndpointSpec
from kubedistill.runtime.demo.tiny import build_tokenizer
from kubedistill.runtime.generation.endpoint import Request, ScoringClient
from kubedistill.runtime.generation.logprobs import (
    SparseTargets,
    TokenLogprobs,
    Unmapped,
    scored_targets,
    sparse_targets,
    token_logprobs_of,
    vocabulary_bytes,
)
from kubedistill.runtime.generation.phase import (
    NO_LOGPROBS,
    UNMAPPED,
    ScoredChat,
    with_scored_targets,
    with_sparse_targets,
)
from kubedistill.runtime.generation.store import Response, Settings

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


def echoed(ids: list[int], name: Any) -> dict[str, Any]:
    """`choices[0].logprobs` of a completion with `echo` over `ids` (the legacy form): each token scored
    -0.5, its top two the token itself and id 30 at -3.0, and the first token unscored, as both servers write
    it; `name(id)` is how the server names a token."""
    return {
        "tokens": [name(i) for i in ids],
        "token_logprobs": [None, *[-0.5] * (len(ids) - 1)],
        "top_logprobs": [None, *[{name(30): -3.0, name(i): -0.5} for i in ids[1:]]],
        "text_offset": [-1] * len(ids),
    }


@pytest.mark.parametrize(
    "server",
    [
        "vllm",  # return_tokens_as_token_ids: `token_id:<id>`
        "sglang",  # text; a byte-level fragment as latin-1, one character per byte
    ],
)
def test_a_scored_answer_keeps_the_sent_ids_and_maps_the_top_tokens_however_named(
    tokenizer: Any, server: str
) -> None:
    table = vocabulary_bytes(tokenizer)
    fragment = tokenizer.convert_tokens_to_ids("Ã")  # the first byte of é, C3: U+FFFD as text

    def name(index: int) -> str:
        if server == "vllm":
            return f"token_id:{index}"
        return "\xc3" if index == fragment else tokenizer.decode([index])

    ids = [*tokenizer.encode("hello there", add_special_tokens=False), fragment]
    scores = echoed(ids, name)
    positions = list(range(2, len(ids)))
    targets = scored_targets(scores, ids, positions, 2, table)
    assert targets.ids == ids[2:], "the ids sent, not read back from the server's text"
    assert targets.logprobs == [-0.5] * len(positions)
    assert targets.top_ids == [[i, 30] for i in ids[2:]], "most likely first"
    assert targets.top_logprobs == [[-0.5, -3.0]] * len(positions)
    assert scored_targets(scores, ids, positions, 1, table).top_ids == [[i] for i in ids[2:]], (
        "vLLM adds the scored token to its top k: only k are kept"
    )


def test_a_scored_top_token_not_the_students_is_unmapped_and_one_sglang_cannot_name_is_tail(
    tokenizer: Any,
) -> None:
    ids = tokenizer.encode("hello there", add_special_tokens=False)
    scores = echoed(ids, tokenizer.decode)
    scores["top_logprobs"][1]["zebra"] = -1.0
    _, reason, detail = with_scored_targets(
        Response("", "stop", scores=scores), ScoredChat(ids, [1]), 2, vocabulary_bytes(tokenizer)
    )
    assert reason == UNMAPPED and "'zebra'" in detail
    del scores["top_logprobs"][1]["zebra"]
    scores["top_logprobs"][1]["\ufffd"] = -1.0  # a fragment SGLang cannot name: counted in the tail
    kept, reason, _ = with_scored_targets(
        Response("", "stop", scores=scores), ScoredChat(ids, [1]), 2, vocabulary_bytes(tokenizer)
    )
    assert reason is None and kept.targets is not None
    assert kept.targets.top_ids == [[ids[1]]] and kept.targets.top_logprobs == [[-0.5]]
    with pytest.raises(ValueError, match="scores of 2 tokens for a prompt of 3"):
        scored_targets({"token_logprobs": [None, -1.0], "top_logprobs": [None, {}]}, [1, 2, 3], [2], 1, {})


def test_the_scoring_request_sends_token_ids_and_asks_the_prompts_top_k() -> None:
    settings = Settings(
        "m", "http://127.0.0.1:30000/v1", None, None, 16, 0, top_logprobs=5, score_answers=True
    )
    client = ScoringClient(
        EndpointSpec(base_url="http://127.0.0.1:30000/v1", model="m"), settings, None, 60.0
    )
    body = client.body(Request(("p", 0), [], 0, token_ids=(4, 8, 15)))
    assert body["prompt"] == [4, 8, 15], "ids, never text the server would tokenise again"
    assert (body["echo"], body["logprobs"], body["max_tokens"]) == (True, 5, 1)
    scores = echoed([4, 8, 15], str)
    completion = {"choices": [{"text": "", "logprobs": scores}], "usage": {"prompt_tokens": 3}}
    response = ScoringClient.response_of(completion)
    assert response.scores == scores and response.usage.prompt_tokens == 3
    with pytest.raises(TypeError, match="no logprobs"):
        ScoringClient.response_of({"choices": [{"text": "", "logprobs": None}]})
