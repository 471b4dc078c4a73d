"""ASAp grammar-aligned sampling against an exactly known grammar-conditioned distribution.

The model is hand-set (:func:`decodekit_grammar.testing.handset_model`): after any prefix it gives
'0' 0.6, '1' 0.2, EOS 0.1 (the remaining 0.1 goes to special tokens, never allowed). The language
``01111 | 1[01]{4}`` is finite (17 strings), so ``P(s | s ∈ L)`` is enumerated exactly. Constrained
decoding picks '0' first with probability 0.75 and is then forced to 01111, whose conditional
probability is only 1.2 %: KL(constrained ‖ exact) ≈ 2.8 nats whatever the sample size.

Significance: for an exact sampler, 2N·KL(empirical ‖ exact) is asymptotically χ²(16); its 99.9 %
quantile is 39.25, so at N = 400 an exact sampler stays below 0.049 with probability 0.999. We
allow 0.07 for ASAp (its first samples are biased by design) and require constrained decoding to
stay above 1.5.
"""

from __future__ import annotations

import collections

import pytest

from decodekit import Pipeline
from decodekit.testing import tiny_tokenizer
from decodekit_grammar.testing import exact_conditional, handset_model, kl

REGEX = "01111|1[01]{4}"
CHAR_P = {"0": 0.6, "1": 0.2}
P_EOS = 0.1


@pytest.fixture(scope="module")
def setup():
    tok = tiny_tokenizer("01")  # ids: 0 pad, 1 eos, 2 bos, 3 unk, 4 '0', 5 '1'
    model = handset_model(tok, {4: CHAR_P["0"], 5: CHAR_P["1"], 1: P_EOS})
    return tok, model, exact_conditional(CHAR_P, REGEX, 5)


def sampler(setup, mode):
    tok, model, _ = setup
    return Pipeline(model, tokenizer=tok, decoding={"strategy": "sample", "max_new_tokens": 8},
                    plugins=[{"name": "grammar", "regex": REGEX, "mode": mode, "cache": False}])


def draw(pipe, n, exact):
    """``n`` samples (seeds 0..n-1); the counts and KL(empirical ‖ exact) after each sample."""
    counts = collections.Counter()
    curve = []
    for s in range(n):
        r = pipe.generate([2], seed=s)
        assert r.completions[0].finish_reason == "eos"
        counts[r.text] += 1
        curve.append(kl(counts, exact))
    return counts, curve


def test_asap_converges_and_constrained_stays_biased(setup):
    _, _, exact = setup
    constrained, c_curve = draw(sampler(setup, "constrained"), 150, exact)
    aligned_pipe = sampler(setup, "aligned")
    aligned, a_curve = draw(aligned_pipe, 400, exact)
    assert set(aligned) <= set(exact) and set(constrained) <= set(exact)
    assert c_curve[-1] > 1.5 and c_curve[49] > 1.5  # biased at every sample size
    assert a_curve[-1] < 0.07
    assert a_curve[-1] < a_curve[49] < a_curve[9] or a_curve[-1] < a_curve[9] / 4


def test_trie_estimates_are_exact_upper_bounds(setup):
    tok, _, _ = setup
    pipe = sampler(setup, "aligned")
    g = pipe.plugins[0][1]
    for s in range(60):
        pipe.generate([2], seed=s)
    root = g.trie.roots[(2,)]
    z = (CHAR_P["0"] * CHAR_P["1"] ** 4 + CHAR_P["1"] * (CHAR_P["0"] + CHAR_P["1"]) ** 4) * P_EOS
    assert root.c >= z * (1 - 1e-4)  # (float32 probabilities) c over-approximates the expected grammaticality
    assert root.c < 1.5 * z
    zero = root.children.get(4)
    if zero is not None and zero.allowed_mass is not None:  # the 0-branch is a single string
        node = zero
        while node.children and 1 not in node.children:
            node = next(iter(node.children.values()))
        if 1 in node.children:  # fully explored: c('0') = P(1111 EOS | 0) exactly
            assert zero.c == pytest.approx(CHAR_P["1"] ** 4 * P_EOS, rel=1e-4)
    # compact: one node per distinct sampled prefix, no stored distributions
    assert g.trie.num_nodes() <= 1 + 60 * 6


def test_save_load_reset(setup, tmp_path):
    pipe = sampler(setup, "aligned")
    g = pipe.plugins[0][1]
    for s in range(20):
        pipe.generate([2], seed=s)
    path = tmp_path / "trie.pkl"
    g.trie.save(path)
    other = sampler(setup, "aligned").plugins[0][1]
    other.trie.load(path)
    assert other.trie.num_nodes() == g.trie.num_nodes()
    assert other.trie.roots[(2,)].c == pytest.approx(g.trie.roots[(2,)].c)
    # the loaded trie steers sampling exactly as the original does
    a = [pipe.generate([2], seed=s).text for s in range(100, 110)]
    pipe2 = sampler(setup, "aligned")
    pipe2.plugins[0][1].trie.load(path)
    b = [pipe2.generate([2], seed=s).text for s in range(100, 110)]
    assert a == b
    g.trie.reset()
    assert g.trie.num_nodes() == 0
