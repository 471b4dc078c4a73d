"""The step rule: argmax over the top k of p(v) − α·R(L(v)), as a rescore of hand-built logits."""

from __future__ import annotations

import math

import pytest
import torch
from momentum_helpers import DEFAULT_R, Ban, brute_momentum_choice

from decodekit import Draft, Positions
from decodekit.generation import Generation, Limits
from decodekit.hooks import HookRunner
from decodekit_momentum import Momentum, MomentumOptions, momentum_scores

NEG = float("-inf")


def logits_for(probs: list[float]) -> torch.Tensor:
    return torch.tensor(probs).log()


def test_scores_by_hand():
    # V = 8; the top 5 are 0 (p .40), 1 (.25), 2 (.15), 3 (.10), 4 (.05)
    logits = logits_for([0.40, 0.25, 0.15, 0.10, 0.05, 0.03, 0.01, 0.01])
    lengths = torch.tensor([3, 0, 1, 0, 5])  # L of tokens 0, 1, 2, 3, 4 (top-k order)
    table = torch.tensor(DEFAULT_R)
    out = momentum_scores(logits, lengths, k=5, alpha=0.2, table=table)
    expected = [0.40 - 0.2 * 4, 0.25, 0.15 - 0.2 * 1, 0.10, 0.05 - 0.2 * 5, NEG, NEG, NEG]
    assert out.tolist() == pytest.approx(expected, abs=1e-6)
    assert int(out.argmax()) == 1  # the new node 1 beats the repeated 3-gram ending in 0


def test_all_candidates_repeat_then_the_most_likely_wins():
    logits = logits_for([0.5, 0.3, 0.2])
    out = momentum_scores(logits, torch.tensor([4, 4, 4]), k=5, alpha=0.2, table=torch.tensor(DEFAULT_R))
    assert int(out.argmax()) == 0


def test_large_probability_gap_overrides_small_resistance():
    # p(0) − 0.2·1 = 0.7 > p(1) = 0.1: a 1-step revisit is cheap
    out = momentum_scores(logits_for([0.9, 0.1]), torch.tensor([1, 0]), k=5, alpha=0.2,
                          table=torch.tensor(DEFAULT_R))
    assert int(out.argmax()) == 0


def test_ruled_out_tokens_stay_ruled_out():
    logits = torch.tensor([2.0, NEG, 1.0, NEG])  # only 2 allowed tokens, k = 5 > V
    out = momentum_scores(logits, torch.tensor([3, 0, 0, 0]), k=5, alpha=0.2, table=torch.tensor(DEFAULT_R))
    assert math.isinf(out[1]) and math.isinf(out[3])
    assert int(out.argmax()) == 2


def test_batched_shapes():
    logits = torch.randn(3, 4, 50)
    lengths = torch.randint(0, 6, (3, 4, 5))
    out = momentum_scores(logits, lengths, k=5, alpha=0.2, table=torch.tensor(DEFAULT_R))
    assert out.shape == (3, 4, 50) and out.dtype == torch.float32
    assert (out.isfinite().sum(-1) == 5).all()


def generation(tokens: list[list[int]], plugin: Momentum, *others: object) -> Generation:
    hooks = HookRunner([("momentum", plugin)] + [(type(o).__name__, o) for o in others])
    gen = Generation(model=None, tokenizer=None, hooks=hooks, tokens=[list(t) for t in tokens],
                     limits=Limits(100), generators=[])
    gen.init_token_states([plugin])
    return gen


@pytest.mark.parametrize("opts", [
    {}, {"k": 3, "alpha": 0.5}, {"max_ngram": 3, "resistance": [0, 1, 2, 3]},
    {"resistance": "log"}, {"resistance": "exp"}, {"resistance": {"form": "constant", "value": 2}},
])
def test_rescore_along_a_draft_matches_the_rule_on_each_prefix(opts):
    """Position j of a draft is scored with the graph of prompt + the draft's first j tokens."""
    plugin = Momentum(MomentumOptions(**opts))
    o = plugin.options
    table = o.resistance.values_for(o.max_ngram)
    prompt = [1, 2, 3, 1, 2, 4, 5, 1]
    draft = Draft.chain([2, 3, 1, 2])
    gen = generation([prompt], plugin)
    positions = Positions.for_drafts(gen, [draft])
    torch.manual_seed(0)
    logits = torch.randn(1, 5, 8) * 0.5
    logits[..., :6] += 2.0  # make the repeated tokens likely
    out = plugin.rescore(positions, logits)
    departs = 0
    for j in range(5):
        text = positions.prefix(0, j)
        want = brute_momentum_choice(logits[0, j], text, k=o.k, alpha=o.alpha, table=table, max_n=o.max_ngram)
        assert int(out[0, j].argmax()) == want, j
        departs += want != int(logits[0, j].argmax())
    assert departs > 0  # the case is not trivially greedy
    assert gen.state_of(plugin, 0).tokens == tuple(prompt)  # scoring a draft commits nothing


def test_tree_draft_and_padding():
    plugin = Momentum()
    gen = generation([[1, 2, 3, 1, 2], [5, 6]], plugin)
    tree = Draft([3, 4, 1], [-1, -1, 1])  # 3 and 4 under the root, 1 under 4
    positions = Positions.for_drafts(gen, [tree, None])
    logits = torch.randn(2, 4, 8)
    out = plugin.rescore(positions, logits)
    for i, n in [(0, 4), (1, 1)]:
        for j in range(n):
            want = brute_momentum_choice(logits[i, j], positions.prefix(i, j))
            assert int(out[i, j].argmax()) == want
    assert out[1, 1:].isfinite().any(-1).all()  # padding positions stay well defined


def test_prompt_tokens_are_nodes_unless_include_prompt_is_off():
    prompt = [1, 2, 3]
    logits = torch.zeros(1, 1, 8)
    logits[0, 0, 3] = 3.0  # 3 is by far the most likely; 3 after 3 closes a 1-step revisit
    logits[0, 0, 7] = 2.5
    on = Momentum(MomentumOptions(alpha=1.0))
    off = Momentum(MomentumOptions(alpha=1.0, include_prompt=False))
    p_on = Positions.for_drafts(generation([prompt], on), [None])
    p_off = Positions.for_drafts(generation([prompt], off), [None])
    assert int(on.rescore(p_on, logits)[0, 0].argmax()) == 7   # 3 is a node: resisted
    assert int(off.rescore(p_off, logits)[0, 0].argmax()) == 3  # the graph starts empty


def test_exempt_eos():
    class Pipe:  # the two things the factory reads from a pipeline
        class config:
            class decoding:
                strategy = "greedy"

        @staticmethod
        def eos_token_ids():
            return frozenset({1})

    logits = torch.zeros(1, 1, 8)
    logits[0, 0, 1] = 3.0
    logits[0, 0, 6] = 2.5
    prompt = [4, 1, 4]  # 4 → 1 was walked: EOS after 4 closes a 2-gram
    plain = Momentum(MomentumOptions(), Pipe())
    exempt = Momentum(MomentumOptions(exempt_eos=True), Pipe())
    for plugin, want in [(plain, 6), (exempt, 1)]:
        pos = Positions.for_drafts(generation([prompt], plugin), [None])
        assert int(plugin.rescore(pos, logits)[0, 0].argmax()) == want



def test_candidates_are_the_top_k_allowed_tokens():
    """With a mask plugin in the pipeline, L and p are taken over the allowed tokens only."""
    plugin = Momentum(MomentumOptions(k=2))
    ban = Ban([0, 1])
    gen = generation([[5, 6, 5]], plugin, ban)
    positions = Positions.for_drafts(gen, [None])
    logits = logits_for([0.5, 0.2, 0.1, 0.09, 0.05, 0.04, 0.02]).reshape(1, 1, 7)
    out = plugin.rescore(positions, logits)[0, 0]
    assert out.isfinite().nonzero().flatten().tolist() == [2, 3]  # top 2 of the allowed 2 .. 6
    p_allowed = torch.tensor([0.1, 0.09, 0.05, 0.04, 0.02]) / 0.3
    assert out[2:4].tolist() == pytest.approx(p_allowed[:2].tolist(), abs=1e-6)  # both new nodes
    masked = logits[0, 0].masked_fill(torch.tensor([True, True] + [False] * 5), NEG)
    assert int(out.argmax()) == brute_momentum_choice(masked, [5, 6, 5], k=2)


def test_a_drafters_own_positions_are_rescored_along_its_path():
    """``generation.process_draft`` (a model drafter's q') applies momentum at the draft's end."""
    plugin = Momentum()
    gen = generation([[1, 2, 3, 1, 2]], plugin)
    logits = torch.zeros(1, 8)
    logits[0, 3], logits[0, 6] = 3.0, 2.5  # 3 would close "1 2 3"; 6 is new
    q = gen.process_draft([0], [[]], logits)
    assert int(q[0].argmax()) == brute_momentum_choice(logits[0], [1, 2, 3, 1, 2]) == 6
    q = gen.process_draft([0], [[4]], logits)  # after the draft token 4, "4 3" is new: L(3) = 1
    assert int(q[0].argmax()) == brute_momentum_choice(logits[0], [1, 2, 3, 1, 2, 4]) == 3
