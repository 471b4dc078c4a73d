"""Token recycling's candidate tree counted in hindsight (hindsight.py): matching, planning, and
that what it counts as accepted is exactly what verification accepts."""

from __future__ import annotations

import pytest

from decodekit_speculative import Speculative
from decodekit_speculative.hindsight import HindsightTree

from speculative_helpers import FLAT, speculative

# root -> a (0), b (1); a -> c (2), d (3); c -> e (4)
TEMPLATE = [(-1, 0, 0.5), (-1, 1, 0.2), (0, 0, 0.3), (0, 1, 0.1), (2, 0, 0.2)]
A, B, C, D, E = 10, 11, 12, 13, 14


def test_matched_follows_the_continuation_down_the_tree():
    tree = HindsightTree(TEMPLATE)
    tokens = [A, B, C, D, E]
    assert tree.matched(tokens, [A, C, E, 99]) == [0, 2, 4]      # down to a leaf
    assert tree.matched(tokens, [A, D]) == [0, 3]                # a leaf: nothing more to know
    assert tree.matched(tokens, [B, 99]) == [1]                  # b has no children
    assert tree.matched(tokens, [99]) == []                      # the root's children all missed
    assert tree.matched(tokens, [A, C]) is None                  # e is still open: wait
    assert tree.matched(tokens, [A, C], final=True) == [0, 2]    # the row stopped there
    assert tree.matched(tokens, []) is None
    # missing nodes (-1) never match, and a node whose children are all missing ends the path
    assert tree.matched([A, B, -1, D, -1], [A, C]) == [0]
    assert tree.matched([A, B, C, D, -1], [A, C]) == [0, 2]


def test_observe_decays_and_reach_blends_the_prior():
    tree = HindsightTree(TEMPLATE, weight=2.0, decay=0.5)
    assert tree.reach() == pytest.approx([a for *_, a in TEMPLATE])
    tree.observe([0, 2])
    tree.observe([1])
    # hits: a 0.5, b 1, c 0.5; visits 1.5
    assert tree.visits == pytest.approx(1.5)
    assert tree.reach() == pytest.approx([(0.5 + 1.0) / 3.5, (1.0 + 0.4) / 3.5, (0.5 + 0.6) / 3.5,
                                          0.2 / 3.5, 0.4 / 3.5])


def test_plan_lists_parents_first_and_weighs_the_cost():
    tree = HindsightTree(TEMPLATE)
    for _ in range(50):
        tree.observe([0, 2, 4])  # a, c, e always: the chain a-c-e is worth more than b
    order = tree.plan(5, None)
    assert order[:3] == [0, 2, 4]
    for n in range(1, 6):  # every prefix is a tree
        assert all(tree.parents[i] in order[:k] or tree.parents[i] == -1 for k, i in enumerate(order[:n]))
    assert tree.plan(2, None) == [0, 2]
    assert tree.plan(5, lambda n: 1.0 + 10.0 * (n > 0)) == []          # every draft costs ten passes
    assert tree.plan(5, lambda n: 1.0) == order                         # free: all of them
    assert tree.plan(5, lambda n: 1.0 + 0.05 * n) == [0, 2, 4]          # b and d do not pay for a node


@pytest.mark.parametrize("decoding", [{"max_new_tokens": 24},
                                      {"strategy": "sample", "temperature": 1.0, "seed": 3, "max_new_tokens": 24}])
def test_hindsight_counts_exactly_what_verification_accepts(tok, llama, monkeypatch, decoding):
    """Of the nodes a step drafted, the ones the hindsight count matches are the ones verification
    accepted (greedy: the argmax chain; sampling: recursive rejection sampling commits a sibling
    exactly when the token it draws is one), step by step."""
    drafted: dict[int, tuple[set[int], object]] = {}  # id of an instantiated tree -> drafted nodes, draft
    accepted: dict[int, int] = {}                      # id of a draft -> nodes verification accepted
    pairs = []                                         # per step: (matched drafted nodes, accepted nodes)
    draft, matched, observe = HindsightTree.draft, HindsightTree.matched, Speculative._observe

    def spy_draft(self, tokens, chosen):
        d = draft(self, tokens, chosen)
        if d is not None:
            drafted[id(tokens)] = ({i for i in chosen if tokens[i] >= 0}, d)
        return d

    def spy_observe(self, d, info, verdict_accepted):
        accepted[id(d)] = len(verdict_accepted)
        return observe(self, d, info, verdict_accepted)

    def spy_matched(self, tokens, continuation, final=False):
        path = matched(self, tokens, continuation, final)
        if path is not None and id(tokens) in drafted:
            nodes, d = drafted.pop(id(tokens))
            if not final:  # a row that stopped may keep fewer tokens than verification accepted
                pairs.append((len(set(path) & nodes), accepted[id(d)]))
        return path

    monkeypatch.setattr(HindsightTree, "draft", spy_draft)
    monkeypatch.setattr(HindsightTree, "matched", spy_matched)
    monkeypatch.setattr(Speculative, "_observe", spy_observe)
    pipe = speculative(llama, tok, decoding, "token_recycling", verify_costs=FLAT, max_draft_tokens=6)
    for prompt in ["hello there", "a b c d a b c d", "zebra"]:
        pipe.generate(prompt)
    assert not drafted  # every drafted tree was counted
    assert len(pairs) > 20 and sum(a for _, a in pairs) > 5
    assert all(m == a for m, a in pairs), pairs
