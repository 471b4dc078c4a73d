"""``tree: dynamic`` (DySpec) for draft_model / layer_skip: the growth rule, the budget, the
sampling contract (siblings without replacement, q per node), then exactness."""

from __future__ import annotations

import pytest
import torch

from decodekit import ConfigError, Pipeline
from decodekit.testing import tiny_model, tiny_tokenizer
from decodekit_speculative.dynamic_tree import DynamicTree, _Row
from decodekit_speculative.planning import sizes_up_to

from speculative_helpers import (FLAT, AcceptEverything, BanTokens, Bias, assert_batch_equals_singles, sample_many,
                                 speculative)
from test_greedy_exact import BAN, BIAS, DECODING, PROMPTS
from test_sampling_exact import ALPHA, N, PROMPT, chi_square_pvalue, reference
from test_sampling_exact import BAN as SAMPLE_BAN, BIAS as SAMPLE_BIAS
from test_sampling_exact import setup  # noqa: F401  (fixture)

MODEL_PROPOSERS = ["draft_model", "layer_skip"]

# q' at each path of a 5-token vocabulary (anything else: uniform)
Q = {
    (): [0.5, 0.3, 0.2, 0.0, 0.0],
    (0,): [0.0, 0.0, 0.0, 0.9, 0.1],
    (1,): [0.0, 0.0, 0.0, 0.4, 0.6],
    (0, 3): [0.7, 0.3, 0.0, 0.0, 0.0],
}


def q_at(path: tuple[int, ...]) -> torch.Tensor:
    return torch.tensor(Q.get(path, [0.2] * 5))


class FakeGen:
    generators = [torch.Generator().manual_seed(0)]


def grow(tree: DynamicTree, max_nodes: int, *, sample=False, adaptive=False, cost=None, q=q_at) -> tuple[_Row, int]:
    """The propose loop without a model: 'forwards' fill q' from ``q``. Returns the row and the
    number of forwards after the root's."""
    row = _Row(0, q(()))
    tree._push_slot(row, -1, sample)
    grid = set(sizes_up_to(max_nodes))
    forwards = 0
    while tree._grow(FakeGen(), row, cost, max_nodes, adaptive, sample, grid):
        forwards += 1
        for i in range(len(row.tokens)):
            if i not in row.q:
                row.q[i] = q(tuple(row.path(i)))
                tree._push_slot(row, i, sample)
    return row, forwards


def test_greedy_growth_takes_the_largest_path_probability_next():
    tree = DynamicTree()
    tree.first_factor = 1.0  # placeholders never under-estimate: strictly best-first order
    row, _ = grow(tree, 8)
    # path products: 0 .5 | 0-3 .45 | 0-3-0 .315 | 1 .3 | 2 .2 | 1-4 .18 | 0-3-1 .135 | 1-3 .12
    assert row.tokens == [0, 3, 0, 1, 2, 4, 1, 3]
    assert row.parents == [-1, 0, 1, -1, -1, 3, 1, 3]
    assert row.gain == pytest.approx(1 + .5 + .45 + .315 + .3 + .2 + .18 + .135 + .12)


def test_lazy_forwards_batch_the_new_nodes():
    tree = DynamicTree()  # first_factor 0.5: a forward only when a new node's child may be next
    row, forwards = grow(tree, 8)
    assert len(row.tokens) == 8 and forwards < 8
    assert len(set(zip(row.parents, row.tokens))) == 8  # siblings distinct


def test_budget_follows_the_cost():
    tree = DynamicTree()
    assert len(grow(tree, 8, adaptive=True, cost=lambda n: 1.0)[0].tokens) == 8  # free: the most
    assert grow(tree, 8, adaptive=True, cost=lambda n: 1.0 + n)[0].tokens == []  # costly: none
    some = grow(tree, 8, adaptive=True, cost=lambda n: 1.0 + 0.05 * n + (5.0 if n > 2 else 0.0))[0]
    assert len(some.tokens) == 2  # the third node would start a much dearer pass


def test_sampled_siblings_are_drawn_without_replacement_with_their_own_q():
    only_root = lambda path: q_at(()) if path == () else torch.zeros(5)  # noqa: E731
    for seed in range(5):
        FakeGen.generators = [torch.Generator().manual_seed(seed)]
        row, _ = grow(DynamicTree(), 3, sample=True, q=only_root)
        assert sorted(row.tokens) == [0, 1, 2] and row.parents == [-1, -1, -1]
        q_root = q_at(())
        for j, (x, qj) in enumerate(zip(row.tokens, row.qj)):
            want = q_root.clone()
            want[row.tokens[:j]] = 0.0
            assert torch.allclose(qj, want / want.sum())  # q_j: q' without the earlier siblings
            assert float(qj[x]) > 0


def test_options():
    tok = tiny_tokenizer()
    model = tiny_model("llama", tok)
    with pytest.raises(ConfigError, match="tree"):
        Pipeline(model, tokenizer=tok, plugins=[{"name": "speculative", "proposer": "prompt_lookup",
                                                 "tree": "dynamic"}])
    with pytest.raises(ConfigError, match="tree"):
        Pipeline(model, tokenizer=tok, plugins=[{"name": "speculative", "proposer": "layer_skip",
                                                 "tree": "fixed"}])


# -- exactness -------------------------------------------------------------------------------

@pytest.mark.parametrize("arch", ["llama", "gpt2", "qwen2"])
@pytest.mark.parametrize("proposer", MODEL_PROPOSERS)
def test_greedy_is_token_identical_with_mask_and_rescore(tok, arch, proposer):
    target, draft = tiny_model(arch, tok), tiny_model(arch, tok, seed=1)
    plain = Pipeline(target, tokenizer=tok, decoding=DECODING, plugins=[Bias(BIAS), BanTokens(BAN)])
    want = [c.token_ids for c in plain.generate(PROMPTS).completions]
    for options in ({"verify_costs": FLAT}, {}):
        pipe = speculative(target, tok, DECODING, proposer, draft=draft, extra=[Bias(BIAS), BanTokens(BAN)],
                           tree="dynamic", **options)
        for _ in range(2):
            got = pipe.generate(PROMPTS)
            assert [c.token_ids for c in got.completions] == want
    flat = speculative(target, tok, DECODING, proposer, draft=draft, extra=[Bias(BIAS), BanTokens(BAN)],
                       tree="dynamic", verify_costs=FLAT).generate(PROMPTS)
    assert flat.stats.drafted_tokens > 0 and flat.stats.accepted_draft_tokens > 0


def test_self_draft_tree_holds_the_greedy_path(tok):
    target = tiny_model("llama", tok)
    dec = {**DECODING, "ignore_eos": True}
    pipe = speculative(target, tok, dec, "draft_model", draft=target, extra=[Bias(BIAS), BanTokens(BAN)],
                       tree="dynamic", verify_costs=FLAT, max_draft_tokens=8)
    res = pipe.generate(PROMPTS[:3])
    plain = Pipeline(target, tokenizer=tok, decoding=dec, plugins=[Bias(BIAS), BanTokens(BAN)])
    assert res.token_ids == plain.generate(PROMPTS[0]).token_ids
    assert res.stats.mean_tokens_per_pass > 2.0


@pytest.mark.parametrize("proposer", MODEL_PROPOSERS)
def test_batch_equals_one_by_one(tok, proposer):
    target, draft = tiny_model("llama", tok), tiny_model("llama", tok, seed=1)
    pipe = speculative(target, tok, DECODING, proposer, draft=draft, extra=[Bias(BIAS), BanTokens(BAN)],
                       tree="dynamic", verify_costs=FLAT)
    assert_batch_equals_singles(pipe, PROMPTS[:6])


@pytest.mark.parametrize("with_plugins", [False, True], ids=["alone", "mask+rescore"])
@pytest.mark.parametrize("proposer", MODEL_PROPOSERS)
def test_sampling_matches_plain(setup, proposer, with_plugins):  # noqa: F811
    tok, model, draft, decoding = setup
    extra = [Bias(SAMPLE_BIAS), BanTokens(SAMPLE_BAN)] if with_plugins else []
    pipe = speculative(model, tok, decoding, proposer, draft=draft, extra=extra, tree="dynamic",
                       verify_costs=FLAT, max_draft_tokens=4)
    counts = sample_many(pipe, PROMPT, N, seed=2)
    stats = counts.stats
    assert stats.accepted_draft_tokens > N // 10, f"drafts were hardly exercised: {stats}"
    assert stats.drafted_tokens > stats.accepted_draft_tokens
    if with_plugins:
        assert all(not set(seq) & set(SAMPLE_BAN) for seq in counts)
    assert chi_square_pvalue(counts, reference(model, with_plugins)) > ALPHA


def test_a_wrong_verifier_fails_the_check(setup):  # noqa: F811
    """Accepting every draft token of the tree visibly changes the distribution."""
    tok, model, draft, decoding = setup
    extra = [AcceptEverything(), Bias(SAMPLE_BIAS), BanTokens(SAMPLE_BAN)]
    pipe = speculative(model, tok, decoding, "draft_model", draft=draft, extra=extra, tree="dynamic",
                       verify_costs=FLAT, max_draft_tokens=4)
    counts = sample_many(pipe, PROMPT, N, seed=2)
    assert chi_square_pvalue(counts, reference(model, True)) < ALPHA
