"""Proposer ``aded``: the tri-gram table's rules, then exactness (greedy, sampling, batches)."""

from __future__ import annotations

import copy

import pytest
import torch

from decodekit import ConfigError, Pipeline
from decodekit.testing import tiny_model
from decodekit.types import Draft
from decodekit_speculative.aded import AdedTable, Entry
from decodekit_speculative.planning import best_prefix
from decodekit_speculative.trees import EdgeCalibration

from speculative_helpers import FLAT, BanTokens, Bias, assert_batch_equals_singles, sample_many, speculative
from test_greedy_exact import BAN, BIAS, DECODING, PROMPTS
from test_sampling_exact import ALPHA, N, PROMPT, chi_square_pvalue, reference
from test_sampling_exact import BAN as SAMPLE_BAN, BIAS as SAMPLE_BIAS
from test_sampling_exact import setup  # noqa: F401  (fixture)


# -- the table -------------------------------------------------------------------------------

def test_entry_keeps_a_decayed_mean_of_the_target_probabilities():
    e = Entry()
    e.observe([5, 6], [0.6, 0.3], k=2, gamma=0.5)
    assert e.p_hat(5) == pytest.approx(0.6) and e.p_hat(6) == pytest.approx(0.3)
    e.observe([6, 7], [0.8, 0.1], k=2, gamma=0.5)
    # w(5) = 0.3, w(6) = 0.15 + 0.8, w(7) = 0.1; z = 1.5; only the k = 2 heaviest stay
    assert set(e.w) == {5, 6}
    assert e.p_hat(6) == pytest.approx(0.95 / 1.5) and e.p_hat(5) == pytest.approx(0.3 / 1.5)
    assert e.p_hat(7) == 0.0
    e2 = Entry()
    e2.observe([9, 3], [0.5, 0.5], k=1, gamma=0.5)
    assert set(e2.w) == {3}  # a tie keeps the smaller token id


def test_trigram_with_bigram_fallback():
    t = AdedTable(k=4, explore=0.0)
    t.observe_scores([(1, 2)], [[7, 8]], [[0.7, 0.2]])
    assert t.entry((1, 2)).p_hat(7) == pytest.approx(0.7)
    assert t.entry((9, 2)) is t.bi[2]            # unseen tri-gram: the bigram of the last token
    assert t.entry((5, 9)) is None               # nothing known at all
    t.observe_scores([(3, 2)], [[8]], [[0.9]])
    assert t.entry((3, 2)).ranked(0.0)[0][1] == 8   # the tri-gram wins over the bigram
    assert t.entry((1, 2)).ranked(0.0)[0][1] == 7
    t.reset()
    assert t.entry((1, 2)) is None


def test_puct_ordering_prefers_rarely_tried_candidates():
    e = Entry()
    e.observe([4, 5], [0.5, 0.4], k=4, gamma=1.0)
    assert [x for _, x, _ in e.ranked(0.5)] == [4, 5]  # nothing tried yet: exploitation
    e.n = {4: 20.0, 5: 0.0}                           # 4 drafted 20 times here, 5 never
    assert [x for _, x, _ in e.ranked(0.0)] == [4, 5]
    ranked = e.ranked(0.5)
    assert [x for _, x, _ in ranked] == [5, 4]
    s5 = 0.4 + 0.5 * 0.4 * 20 ** 0.5 / 1.0
    assert ranked[0][0] == pytest.approx(s5)


def test_rescore_feeds_the_table_and_counts_what_was_tried(tok):
    model = tiny_model("llama", tok)
    pipe = speculative(model, tok, {"max_new_tokens": 1}, "aded", verify_costs=FLAT)
    ids = pipe.encode("abcabc", raw=True)
    pipe.generate(ids)  # one target pass: the prompt's end is scored once
    table = pipe.plugins[0][1].aded
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([ids])).logits[0, -1]
    e = table.entry(tuple(ids[-2:]))
    assert e is not None and max(e.w, key=e.w.get) == int(logits.argmax())
    pipe.generate(ids, max_new_tokens=12)
    assert any(sum(e.n.values()) > 0 for e in table.tri.values())  # drafted nodes were counted


def test_tree_grows_best_first_by_priority():
    t = AdedTable(k=3, explore=0.0)
    # after (0, 1): 2 (0.6) or 3 (0.3); after (1, 2): 4 (0.9); after (1, 3): 5 (0.5)
    t.observe_scores([(0, 1), (1, 2), (1, 3), (2, 4)], [[2, 3], [4], [5], [6]], [[0.6, 0.3], [0.9], [0.5], [0.2]])
    tokens, parents, p_hats, _ = t.grow((0, 1), 10)
    # priorities: 2: .6, 2-4: .54, 3: .3, 2-4-6: .108 (the (2, 4) tri-gram), 3-5: .15
    assert tokens == [2, 4, 3, 5, 6]
    assert parents == [-1, 0, -1, 2, 1]
    assert all(p < i for i, p in enumerate(parents))
    assert t.grow((0, 1), 2)[0] == [2, 4]  # the budget cuts the order: still a tree
    reach = t.reach(parents, p_hats)
    assert reach[1] == pytest.approx(t.calibration.accept(0.6) * t.calibration.accept(0.9))


def test_budget_follows_the_cost():
    reach = [0.9, 0.8, 0.5, 0.2, 0.1]
    assert best_prefix(reach, lambda n: 1.0) == 5            # free verification: draft everything
    assert best_prefix(reach, lambda n: 1.0 + 10 * n) == 0   # very costly: plain steps
    # (1 + .9 + .8) / 1.3 > (1 + .9) / 1.2 and beats wider ones at 0.3 a node beyond 2
    assert best_prefix(reach, lambda n: 1.0 + 0.1 * min(n, 2) + 0.3 * max(0, n - 2)) == 2


def test_calibration_learns_from_verification():
    cal = EdgeCalibration(weight=1.0)
    d = Draft([5, 6, 7], [-1, -1, 0])
    for _ in range(20):  # child 0 (f = 0.2) always accepted, then 7 (f = 0.2) always accepted
        cal.observe(d, [0.2, 0.1, 0.2], [0, 2])
    assert cal.factor > 2.0
    assert cal.accept(0.2) > 0.4


def test_options(tok):
    model = tiny_model("llama", tok)
    for entry, match in [({"proposer": "prompt_lookup", "explore": 1.0}, "explore"),
                         ({"proposer": "token_recycling", "persist_table": False}, "persist_table"),
                         ({"proposer": "aded", "explore": -1}, "explore")]:
        with pytest.raises(ConfigError, match=match):
            Pipeline(model, tokenizer=tok, plugins=[{"name": "speculative", **entry}])


def test_table_persists_and_can_be_reset(tok):
    model = tiny_model("llama", tok)
    pipe = speculative(model, tok, {"max_new_tokens": 8}, "aded")
    pipe.generate("abc abc")
    table = pipe.plugins[0][1].aded
    n = len(table.tri)
    assert n > 0
    pipe.generate("xyz xyz")
    assert len(table.tri) > n  # kept, and grown
    table.reset()
    assert not table.tri and not table.bi
    fresh = speculative(model, tok, {"max_new_tokens": 8}, "aded", persist_table=False)
    fresh.generate("abc abc")
    before = copy.deepcopy(fresh.plugins[0][1].aded.tri)
    fresh.generate("xyz xyz")
    assert not set(before) <= set(fresh.plugins[0][1].aded.tri)  # the first call's contexts are gone


def test_same_table_state_same_result(setup):  # noqa: F811
    """Seeded sampling, fixed costs: a call from the same table state gives the same tokens."""
    tok, model, _, decoding = setup
    pipe = speculative(model, tok, {**decoding, "seed": 3}, "aded", verify_costs=FLAT, max_draft_tokens=4)
    pipe.generate(PROMPT)  # learn something
    spec = pipe.plugins[0][1]
    state = copy.deepcopy(spec.aded)
    first = pipe.generate([PROMPT] * 8)
    spec.aded = copy.deepcopy(state)
    second = pipe.generate([PROMPT] * 8)
    assert [c.token_ids for c in first.completions] == [c.token_ids for c in second.completions]
    assert first.stats.drafted_tokens == second.stats.drafted_tokens > 0


# -- exactness -------------------------------------------------------------------------------

@pytest.mark.parametrize("arch", ["llama", "gpt2", "qwen2"])
def test_greedy_is_token_identical_with_mask_and_rescore(tok, arch):
    target = tiny_model(arch, tok)
    plain = Pipeline(target, tokenizer=tok, decoding=DECODING, plugins=[Bias(BIAS), BanTokens(BAN)])
    want = [c.token_ids for c in plain.generate(PROMPTS).completions]
    for options in ({"verify_costs": FLAT}, {}):
        pipe = speculative(target, tok, DECODING, "aded", extra=[Bias(BIAS), BanTokens(BAN)], **options)
        for _ in range(2):  # the second call drafts from what the first taught the table
            got = pipe.generate(PROMPTS)
            assert [c.token_ids for c in got.completions] == want
    flat = speculative(target, tok, DECODING, "aded", extra=[Bias(BIAS), BanTokens(BAN)], verify_costs=FLAT)
    flat.generate(PROMPTS)
    res = flat.generate(PROMPTS)
    assert res.stats.drafted_tokens > 0 and res.stats.accepted_draft_tokens > 0


def test_batch_equals_one_by_one(tok):
    target = tiny_model("llama", tok)
    pipe = speculative(target, tok, DECODING, "aded", extra=[Bias(BIAS), BanTokens(BAN)], verify_costs=FLAT)
    assert_batch_equals_singles(pipe, PROMPTS[:6])


@pytest.mark.parametrize("with_plugins", [False, True], ids=["alone", "mask+rescore"])
def test_sampling_matches_plain(setup, with_plugins):  # noqa: F811
    tok, model, _, decoding = setup
    extra = [Bias(SAMPLE_BIAS), BanTokens(SAMPLE_BAN)] if with_plugins else []
    pipe = speculative(model, tok, decoding, "aded", extra=extra, verify_costs=FLAT, max_draft_tokens=4)
    sample_many(pipe, PROMPT, 200, seed=7)  # 3 new tokens teach an empty table little: warm it first
    counts = sample_many(pipe, PROMPT, N, seed=2)
    stats = counts.stats
    assert stats.accepted_draft_tokens > N // 10, f"drafts were hardly exercised: {stats}"
    assert stats.drafted_tokens > stats.accepted_draft_tokens
    if with_plugins:
        assert all(not set(seq) & set(SAMPLE_BAN) for seq in counts)
    assert chi_square_pvalue(counts, reference(model, with_plugins)) > ALPHA
