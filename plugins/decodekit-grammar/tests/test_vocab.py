"""The byte vocabulary read from a tokenizer: byte-level BPE, SentencePiece, plain; specials out."""

from __future__ import annotations

import pytest

from decodekit.testing import tiny_tokenizer
from decodekit_grammar.vocab import byte_alphabet, from_tokenizer


def test_byte_alphabet_is_a_bijection():
    a = byte_alphabet()
    assert sorted(a.values()) == list(range(256)) and a["Ġ"] == 32 and a["Ċ"] == 10 and a["!"] == 33


def test_plain_tokenizer():
    tok = tiny_tokenizer()
    v = from_tokenizer(tok)
    assert v.size == len(tok)
    assert v.tokens[:4] == [None] * 4  # <pad> <eos> <bos> <unk>
    assert v.tokens[tok.convert_tokens_to_ids("a")] == b"a"
    assert v.eos_token_id == 1


def sentencepiece_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "▁": 3, "▁the": 4, "é": 5, "<0x0A>": 6, "<0xC3>": 7, "a": 8}
    core = Tokenizer(models.BPE(vocab, [], unk_token="<unk>", byte_fallback=True))
    core.pre_tokenizer = pre_tokenizers.Metaspace()
    core.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    return PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", bos_token="<s>", eos_token="</s>")


def test_sentencepiece_tokenizer():
    v = from_tokenizer(sentencepiece_tokenizer())
    assert v.tokens[:3] == [None, None, None]
    assert v.tokens[3] == b" " and v.tokens[4] == b" the" and v.tokens[5] == "é".encode()
    assert v.tokens[6] == b"\n" and v.tokens[7] == b"\xc3"  # a partial UTF-8 byte token
    assert v.eos_token_id == 2


@pytest.mark.embedded
def test_smollm2_byte_level_vocabulary():
    from decodekit.models import load

    _, tok = load("smollm2-135m", "cpu", "auto")
    v = from_tokenizer(tok)
    assert v.size == 49152
    assert all(v.tokens[i] is None for i in tok.all_special_ids)
    partial = 0
    for i, b in enumerate(v.tokens):
        if b is None:
            continue
        try:
            text = b.decode("utf-8")
        except UnicodeDecodeError:
            partial += 1
            continue
        assert tok.decode([i]) == text, i
    assert partial > 100  # byte-level BPE has many tokens that are partial UTF-8 sequences
    ids = tok.encode("héllo wörld ✓")
    assert b"".join(v.tokens[i] for i in ids) == "héllo wörld ✓".encode()
