"""Diversity on the embedded model, and composition with a mask plugin on the tiny models."""

from __future__ import annotations

import pytest

from decodekit import Pipeline
from decodekit_diverse_beam.metrics import distinct_n

PROMPTS = ["Write a one-line poem about rain.", "Give me a name for a cat."]


def test_distinct_n():
    assert distinct_n([[1, 2, 3], [1, 2, 3]], 2) == 0.5  # 2 unique bigrams of 4
    assert distinct_n([[1, 2, 3], [4, 5, 6]], 2) == 1.0
    assert distinct_n([[1], [2]], 2) == 0.0


def returned(pipe, prompt, lam):
    return [s.token_ids for s in pipe.generate(prompt, diversity_penalty=lam, num_return_sequences=6)
            .completions[0].sequences]


@pytest.mark.embedded
def test_sequences_are_distinct_across_groups(smol):
    for p in PROMPTS:
        seqs = returned(smol, p, 1.0)
        assert len(seqs) == 6
        assert len({tuple(s) for s in seqs}) == 6, p


@pytest.mark.embedded
def test_distinct_n_rises_with_the_penalty(smol):
    lams = [0.0, 1.0, 4.0]
    d2 = {lam: sum(distinct_n(returned(smol, p, lam), 2) for p in PROMPTS) / len(PROMPTS) for lam in lams}
    assert d2[0.0] < d2[1.0] <= d2[4.0], d2
    assert d2[4.0] - d2[0.0] > 0.1, d2


@pytest.mark.parametrize("k,G,lam", [(4, 2, 1.0), (6, 3, 2.0), (4, 4, 0.5)])
def test_every_beam_respects_a_stateful_mask(tiny, tok, alternate_parity, k, G, lam):
    arch, model = tiny
    decoding = {"strategy": "diverse_beam", "num_beams": k, "num_groups": G, "diversity_penalty": lam,
                "num_return_sequences": k, "max_new_tokens": 10}
    masked = Pipeline(model, tokenizer=tok, decoding=decoding, plugins=[alternate_parity()])
    plain = Pipeline(model, tokenizer=tok, decoding=decoding)
    changed = False
    for p in ["hello world", "ab", "the quick brown fox"]:
        ids = masked.encode(p)
        seqs = [s.token_ids for s in masked.generate(ids).completions[0].sequences]
        assert len(seqs) == k
        for toks in seqs:
            assert all(a % 2 != b % 2 for a, b in zip(toks, toks[1:])), (arch, toks)
        unmasked = [s.token_ids for s in plain.generate(ids).completions[0].sequences]
        changed |= seqs != unmasked
    assert changed, "the mask should change some output"


def test_one_group_with_a_mask_is_beam_search_with_the_mask(tiny, tok, alternate_parity):
    arch, model = tiny
    common = {"num_beams": 4, "num_return_sequences": 4, "max_new_tokens": 10}
    dbs = Pipeline(model, tokenizer=tok, plugins=[alternate_parity()],
                   decoding={"strategy": "diverse_beam", "num_groups": 1, **common})
    beam = Pipeline(model, tokenizer=tok, plugins=[alternate_parity()], decoding={"strategy": "beam", **common})
    for p in ["hello world", "ab"]:
        ids = dbs.encode(p)
        got = dbs.generate(ids).completions[0].sequences
        want = beam.generate(ids).completions[0].sequences
        assert [s.token_ids for s in got] == [s.token_ids for s in want], arch
        assert [s.score for s in got] == pytest.approx([s.score for s in want], rel=1e-5)
