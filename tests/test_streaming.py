"""Streaming: text pieces join to the full text and never split a multi-byte character."""

from __future__ import annotations

from decodekit import Pipeline
from decodekit.streaming import TextStream


def test_multibyte_characters_are_held_back_until_complete(embedded):
    tok = embedded.tokenizer
    text = "Grüße 🙂 日本語 — ok"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    # byte-level BPE splits the emoji and the CJK characters over several tokens
    assert any("\ufffd" in tok.decode([i]) for i in ids)
    stream = TextStream(tok)
    pieces = [stream.push([i]) for i in ids] + [stream.flush()]
    assert all("\ufffd" not in p for p in pieces)
    assert "".join(pieces) == text


def test_stream_yields_the_same_text_as_generate(llama, tok):
    pipe = Pipeline(llama, tokenizer=tok, decoding={"max_new_tokens": 20})
    stream = pipe.stream("hello world")
    pieces = list(stream)
    assert "".join(pieces) == stream.result.text == pipe.generate("hello world").text
    assert len(pieces) > 1


def test_on_text_callback_for_a_batch(llama, tok):
    pipe = Pipeline(llama, tokenizer=tok, decoding={"max_new_tokens": 12})
    got: dict[int, str] = {}
    res = pipe.generate(["ab", "hello"], on_text=lambda i, piece: got.__setitem__(i, got.get(i, "") + piece))
    assert [got.get(0, ""), got.get(1, "")] == res.texts


def test_embedded_stream(embedded):
    stream = embedded.stream("Say hello in French.", max_new_tokens=10)
    text = "".join(stream)
    assert text == stream.result.text and text
