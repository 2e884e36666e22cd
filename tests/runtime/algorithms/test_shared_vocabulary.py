"""The fixed id mapping between two vocabularies: the pieces that stand for the same text in both."""

from pathlib import Path

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from kubedistill.runtime.algorithms.simple_ctkd import SimpleCrossTokenizerKD
from kubedistill.runtime.data.alignment import shared_vocabulary, token_pieces
from kubedistill.runtime.losses.config import KDConfig
from tests.runtime.algorithms.conftest import Tokenizers, context


def sentencepiece_style(pieces: list[str], eos: str = "</s>") -> PreTrainedTokenizerFast:
    """A word-level tokenizer that spells spaces as SentencePiece does ("▁") and has byte-fallback tokens."""
    vocabulary = {piece: index for index, piece in enumerate([eos, "<unk>", *pieces])}
    core = Tokenizer(models.WordLevel(vocabulary, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Metaspace()
    core.decoder = decoders.Metaspace()
    return PreTrainedTokenizerFast(tokenizer_object=core, eos_token=eos, unk_token="<unk>")


def test_a_tokenizer_shares_every_piece_with_itself_in_id_order(tokenizers: Tokenizers) -> None:
    shared = shared_vocabulary(tokenizers.student, tokenizers.student)
    everything = tuple(range(len(tokenizers.student)))
    assert shared.student_ids == shared.teacher_ids == everything


def test_shared_pieces_of_two_vocabularies_decode_to_the_same_text(tokenizers: Tokenizers) -> None:
    shared = shared_vocabulary(tokenizers.student, tokenizers.teacher)
    assert len(shared) > 0.9 * len(tokenizers.student)
    assert len(set(shared.student_ids)) == len(set(shared.teacher_ids)) == len(shared)
    student_tokens = tokenizers.student.convert_ids_to_tokens(list(shared.student_ids))
    teacher_tokens = tokenizers.teacher.convert_ids_to_tokens(list(shared.teacher_ids))
    assert student_tokens == teacher_tokens


def test_partial_utf8_bytes_are_pieces_of_their_own(tokenizers: Tokenizers) -> None:
    """Decoded alone, every continuation byte reads as U+FFFD; as bytes they stay 64 distinct pieces."""
    pieces = token_pieces(tokenizers.student)
    continuation = [pieces[("text", bytes([byte]))] for byte in range(0x80, 0xC0)]
    assert len(set(continuation)) == 64
    assert {tokenizers.student.decode([index]) for index in continuation} == {"\ufffd"}


def test_sentencepiece_spaces_and_byte_level_spaces_are_the_same_piece(tokenizers: Tokenizers) -> None:
    other = sentencepiece_style(["▁small", "▁frog", "es", "zzqx"])
    shared = shared_vocabulary(tokenizers.teacher, other)
    pairs = {
        other.convert_ids_to_tokens(t): tokenizers.teacher.convert_ids_to_tokens(s)
        for s, t in zip(shared.student_ids, shared.teacher_ids, strict=True)
    }
    assert pairs["▁small"] == "Ġsmall"
    assert pairs["▁frog"] == "Ġfrog"
    assert pairs["es"] == "es"
    assert "zzqx" not in pairs


def test_both_end_of_sequence_tokens_are_one_piece_whatever_their_text(tokenizers: Tokenizers) -> None:
    other = sentencepiece_style(["▁frog"], eos="</s>")
    shared = shared_vocabulary(tokenizers.student, other)
    assert (tokenizers.student.eos_token_id, other.eos_token_id) in zip(
        shared.student_ids, shared.teacher_ids, strict=True
    )


def test_a_byte_fallback_token_yields_to_an_ordinary_token_of_the_same_byte() -> None:
    tokenizer = sentencepiece_style(["A", "<0x41>", "<0x42>"])
    pieces = token_pieces(tokenizer)
    assert tokenizer.convert_ids_to_tokens(pieces[("text", b"A")]) == "A"
    assert tokenizer.convert_ids_to_tokens(pieces[("text", b"B")]) == "<0x42>"


def test_simple_ctkd_refuses_tokenizers_that_share_too_few_pieces(
    tokenizers: Tokenizers, tmp_path: Path
) -> None:
    strangers = sentencepiece_style([f"▁w{i}zq" for i in range(400)])
    strangers.save_pretrained(tmp_path)
    job = context(tokenizers, KDConfig())
    job = type(job)(**{**job.__dict__, "teacher_tokenizer": str(tmp_path)})
    with pytest.raises(
        ValueError,
        match=r"^spec.distillation.algorithm: simpleCtkd distils over the vocabulary pieces both tokenizers "
        r"share, and these share 1 of 320 \(it needs at least 10% of the smaller vocabulary\)",
    ):
        SimpleCrossTokenizerKD(job)
