"""llguidance speed-ups that must not change a mask: token slices, memoised forced-text tokenizing."""

from __future__ import annotations

import random

import numpy as np
import pytest

from decodekit_grammar.backends import llg
from decodekit_grammar.constraints import grammar_dirs
from decodekit_grammar.testing import INVOICE, INVOICE_TEXT


def lark_file(name: str) -> str:
    return next(d / f"{name}.lark" for d in grammar_dirs() if (d / f"{name}.lark").exists()).read_text()


def cases():
    return [
        (llg.json_grammar(INVOICE), INVOICE_TEXT),
        (llg.regex_grammar(r"[a-z]{1,12}@[a-z]{1,12}\.(com|org|net)"), "grace@navy.org"),
        (llg.regex_grammar(r"[A-Z][a-z]{2,8}( [A-Z][a-z]{2,8})?"), "Grace Hopper"),
        (llg.lark_grammar(lark_file("sql_select")),
         "SELECT name, COUNT(*) AS n FROM users u JOIN orders o ON u.id = o.user_id WHERE age >= 18;"),
        (llg.lark_grammar(lark_file("arithmetic")), "(12 + 3.5) * 4 - 7 / (2 + 1)"),
        (llg.lark_grammar(lark_file("json")), '{"name": "Ada", "langs": ["en", "fr"], "x": null}'),
    ]


def walk_masks(tokenizer, grammar: str, ids: list[int], seed: int, random_steps: int) -> list[np.ndarray]:
    """The packed mask at each prefix of ``ids``, then along ``random_steps`` random allowed tokens."""
    import llguidance

    m = llguidance.LLMatcher(tokenizer, grammar, log_level=0)
    assert not m.is_error(), m.get_error()
    rng = random.Random(seed)
    out = []
    for step in range(len(ids) + random_steps):
        words = np.zeros((tokenizer.vocab_size + 31) // 32, dtype=np.int32)
        m.unsafe_compute_mask_ptr(words.ctypes.data, words.nbytes)
        out.append(words)
        if step < len(ids):
            t = ids[step]
        else:
            allowed = np.flatnonzero(np.unpackbits(words.view(np.uint8), bitorder="little"))
            allowed = [int(a) for a in allowed if a != tokenizer.eos_token]
            if not allowed:
                break
            t = rng.choice(allowed)
        assert m.consume_token(t), (step, t)
    return out


@pytest.mark.embedded
def test_slices_and_memoised_encode_keep_masks_bit_for_bit():
    import llguidance

    from decodekit.models import load
    from decodekit_grammar.vocab import from_tokenizer

    _, tok = load("smollm2-135m", "cpu", "auto")
    vocab = from_tokenizer(tok)

    class Plain(llg._Wrapped):  # llguidance's default slices, every forced text tokenized afresh
        def __call__(self, text: str) -> list[int]:
            return list(vocab.encode(text))

    plain = llguidance.LLTokenizer(llguidance.TokenizerWrapper(Plain(vocab)))
    fast = llg.lltokenizer(vocab)
    for grammar, text in cases():
        ids = list(vocab.encode(text))
        for seed in range(3):
            a = walk_masks(plain, grammar, ids[: len(ids) // (seed + 1)], seed, 12)
            b = walk_masks(fast, grammar, ids[: len(ids) // (seed + 1)], seed, 12)
            assert len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b)), (text, seed)
    # the memo is hit (JSON keys are forced texts) and answers like the tokenizer
    wrapped = llg._Wrapped(vocab)
    for text in ['"invoice_id": "', ' "customer": {"name": "', "héllo"]:
        assert wrapped(text) == wrapped(text) == list(vocab.encode(text))
    assert wrapped._encode.cache_info().hits == 3
