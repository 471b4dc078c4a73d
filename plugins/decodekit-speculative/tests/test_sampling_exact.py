"""Speculative sampling is exact: the sequences it generates follow plain sampling's distribution.

Setting: a tiny Llama over a 6-token vocabulary (``tiny_tokenizer(chars="ab")``: 0 pad, 1 eos,
2 bos, 3 unk, 4 'a', 5 'b'), 3 new tokens (EOS ignored), temperature 0.8. The exact distribution of plain
sampling over all sequences is computed by enumeration (with the same mask and rescore plugins
when they are active); ``N`` independent speculative runs are then compared with it by a
chi-square goodness-of-fit test at significance level ALPHA = 0.001 (bins with an expected
count below 5 are pooled). Each proposer is checked with and without a mask + rescore plugin,
and a deliberately wrong verifier (accept every draft token) must fail the same test.
"""

from __future__ import annotations

import pytest
from scipy.stats import chisquare

from decodekit import Pipeline
from decodekit.testing import tiny_model, tiny_tokenizer

from speculative_helpers import (
    FLAT,
    PROPOSERS,
    AcceptEverything,
    BanTokens,
    Bias,
    exact_distribution,
    sample_many,
    speculative,
)

ALPHA = 1e-3
N = 2000
STEPS = 3
TEMPERATURE = 0.8
BAN = [3]
BIAS = {5: 0.8, 2: -1.0}
PROMPT = [2, 4, 5, 0, 3, 4, 3, 3, 4, 1, 2, 4, 1, 1, 2]  # a sample of the model itself: there is text to copy


@pytest.fixture(scope="module")
def setup():
    tok = tiny_tokenizer(chars="ab")
    model = tiny_model("llama", tok, init_range=0.5, seed=9)
    draft = tiny_model("llama", tok, init_range=0.5, seed=11)  # a different model: q' != p'
    decoding = {"strategy": "sample", "max_new_tokens": STEPS, "temperature": TEMPERATURE, "ignore_eos": True}
    return tok, model, draft, decoding


def chi_square_pvalue(counts, exact: dict[tuple[int, ...], float]) -> float:
    n = sum(counts.values())
    if not set(counts) <= set(exact):
        return 0.0  # a sequence plain sampling can never produce: certainly not the same distribution
    obs, exp, pool_o, pool_e = [], [], 0, 0.0
    for seq, p in exact.items():
        if p * n >= 5:
            obs.append(counts.get(seq, 0))
            exp.append(p * n)
        else:
            pool_o += counts.get(seq, 0)
            pool_e += p * n
    if pool_e > 0:
        obs.append(pool_o)
        exp.append(pool_e)
    assert len(obs) >= 5, "too few bins for a meaningful test"
    scale = n / sum(exp)  # float rounding of the enumerated probabilities
    exp = [e * scale for e in exp]
    return float(chisquare(obs, exp).pvalue)


def reference(model, with_plugins: bool):
    eos: set[int] = set()  # ignore_eos: every sequence has STEPS tokens
    if with_plugins:
        return exact_distribution(model, PROMPT, STEPS, eos, TEMPERATURE, BAN, Bias(BIAS))
    return exact_distribution(model, PROMPT, STEPS, eos, TEMPERATURE, [], None)


def test_plain_sampling_matches_the_enumerated_distribution(setup):
    """The reference itself: plain sampling passes the test (so failures below mean something)."""
    tok, model, _, decoding = setup
    for with_plugins in (False, True):
        extra = [Bias(BIAS), BanTokens(BAN)] if with_plugins else []
        plain = Pipeline(model, tokenizer=tok, decoding=decoding, plugins=extra)
        counts = sample_many(plain, PROMPT, N, seed=1)
        assert chi_square_pvalue(counts, reference(model, with_plugins)) > ALPHA


@pytest.mark.parametrize("with_plugins", [False, True], ids=["alone", "mask+rescore"])
@pytest.mark.parametrize("proposer", PROPOSERS)
def test_speculative_sampling_matches_plain(setup, proposer, with_plugins):
    tok, model, draft, decoding = setup
    extra = [Bias(BIAS), BanTokens(BAN)] if with_plugins else []
    pipe = speculative(model, tok, decoding, proposer, draft=draft, extra=extra,
                       verify_costs=FLAT, draft_threshold=0.0, max_draft_tokens=4)
    counts = sample_many(pipe, PROMPT, N, seed=2)
    stats = counts.stats
    assert stats.accepted_draft_tokens > N // 10, f"drafts were hardly exercised: {stats}"
    assert stats.drafted_tokens > stats.accepted_draft_tokens, "no draft was ever rejected"
    if with_plugins:
        assert all(3 not in seq for seq in counts)  # the mask holds
    assert chi_square_pvalue(counts, reference(model, with_plugins)) > ALPHA


@pytest.mark.parametrize("proposer", ["draft_model", "token_recycling"])
def test_a_wrong_verifier_fails_the_check(setup, proposer):
    """Accepting every draft token (no rejection sampling) visibly changes the distribution."""
    tok, model, draft, decoding = setup
    extra = [AcceptEverything(), Bias(BIAS), BanTokens(BAN)]
    pipe = speculative(model, tok, decoding, proposer, draft=draft, extra=extra,
                       verify_costs=FLAT, draft_threshold=0.0, max_draft_tokens=4)
    counts = sample_many(pipe, PROMPT, N, seed=2)
    assert chi_square_pvalue(counts, reference(model, True)) < ALPHA
