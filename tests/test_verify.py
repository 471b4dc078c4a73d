"""Verifiers on synthetic distributions: greedy walks the tree; rejection sampling is exact.

Exactness is checked statistically: over many seeded trials, the first two emitted tokens must be
distributed as p'(x1) p'(x2 | x1). A chi-square test at significance 0.001 must pass for the real
verifier and fail (p < 1e-6) for a deliberately wrong one that accepts every draft token.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from scipy.stats import chisquare

from decodekit.types import Draft, Verdict
from decodekit.verify import greedy_verdict, sample_verdict

V = 4
ALPHA = 1e-3


def target(path: tuple[int, ...]) -> torch.Tensor:
    """p'(· | path): a fixed, path-dependent distribution over V tokens."""
    g = torch.Generator().manual_seed(hash(path) % (2**31))
    return torch.softmax(torch.randn(V, generator=g) * 1.5, dim=-1)


def drafter(path: tuple[int, ...]) -> torch.Tensor:
    """q(· | path): a different distribution, so drafts are often rejected."""
    g = torch.Generator().manual_seed((hash(path) + 7) % (2**31))
    return torch.softmax(torch.randn(V, generator=g), dim=-1)


def logprobs_for(draft: Draft) -> torch.Tensor:
    rows = [target(())] + [target(tuple(draft.tokens[k] for k in draft.path(i))) for i in range(len(draft))]
    return torch.stack(rows).log()


def exact_two_token() -> dict[tuple[int, int], float]:
    return {(a, b): float(target(())[a] * target((a,))[b]) for a, b in itertools.product(range(V), repeat=2)}


def emitted(draft: Draft, v: Verdict) -> list[int]:
    return [draft.tokens[i] for i in v.accepted] + [v.next_token]


def second_token(first: list[int], gen: torch.Generator) -> list[int]:
    """Complete to two tokens by plain sampling when verify emitted only one."""
    if len(first) >= 2:
        return first[:2]
    return first + [int(torch.multinomial(target(tuple(first)), 1, generator=gen))]


def run_trials(make_draft, verdict_fn, n: int = 6000) -> float:
    gen = torch.Generator().manual_seed(1234)
    counts = {k: 0 for k in exact_two_token()}
    for _ in range(n):
        draft = make_draft(gen)
        v = verdict_fn(draft, logprobs_for(draft), gen)
        counts[tuple(second_token(emitted(draft, v), gen))] += 1
    exp = exact_two_token()
    keys = sorted(exp)
    total = sum(exp.values())
    return chisquare([counts[k] for k in keys], [exp[k] / total * n for k in keys]).pvalue


def sampled_chain(gen: torch.Generator, length: int = 2) -> Draft:
    toks, qs, path = [], [], ()
    for _ in range(length):
        q = drafter(path)
        t = int(torch.multinomial(q, 1, generator=gen))
        toks.append(t)
        qs.append(q)
        path = path + (t,)
    return Draft.chain(toks, torch.stack(qs))


def sampled_siblings(gen: torch.Generator) -> Draft:
    """Two root children drawn i.i.d. from q, and one grandchild under the first."""
    q0 = drafter(())
    a, b = (int(torch.multinomial(q0, 1, generator=gen)) for _ in range(2))
    qa = drafter((a,))
    c = int(torch.multinomial(qa, 1, generator=gen))
    return Draft([a, b, c], [-1, -1, 0], torch.stack([q0, q0, qa]))


def deterministic_tree(gen: torch.Generator) -> Draft:
    # distinct root children 0 and 2; 1 under 0; 3 under 2
    return Draft([0, 2, 1, 3], [-1, -1, 0, 1])


@pytest.mark.parametrize("make_draft", [sampled_chain, sampled_siblings, deterministic_tree,
                                        lambda g: Draft.chain([1, 1, 0])],
                         ids=["chain-q", "siblings-q", "tree-onehot", "chain-onehot"])
def test_rejection_sampling_is_exact(make_draft):
    assert run_trials(make_draft, sample_verdict) > ALPHA


def accept_everything(draft: Draft, logprobs: torch.Tensor, gen: torch.Generator) -> Verdict:
    """A wrong verifier: takes the first child at every level, then samples from p'."""
    node, accepted = -1, []
    while draft.children(node):
        node = draft.children(node)[0]
        accepted.append(node)
    return Verdict(accepted, int(torch.multinomial(logprobs[node + 1].exp(), 1, generator=gen)))


@pytest.mark.parametrize("make_draft", [sampled_chain, deterministic_tree], ids=["chain-q", "tree-onehot"])
def test_wrong_verifier_fails_the_same_check(make_draft):
    assert run_trials(make_draft, accept_everything) < 1e-6


def test_greedy_verdict_walks_the_matching_branch():
    # root argmax 2; after (2) argmax 3; after (2, 3) argmax 0
    lp = torch.full((5, V), -10.0)
    draft = Draft([1, 2, 3, 1], [-1, -1, 1, 1])
    lp[0, 2] = 0  # root
    lp[2, 3] = 0  # after node 1 (token 2)
    lp[3, 0] = 0  # after node 2 (tokens 2, 3)
    v = greedy_verdict(draft, lp)
    assert v.accepted == [1, 2] and v.next_token == 0


def test_greedy_verdict_without_draft_is_argmax():
    lp = torch.log_softmax(torch.tensor([[0.1, 3.0, 0.2, -1.0]]), dim=-1)
    assert greedy_verdict(None, lp) == Verdict([], 1, pytest.approx(float(lp[0, 1])))


def test_draft_validation_messages():
    with pytest.raises(ValueError, match="parent"):
        Draft([1, 2], [-1, 5])
    with pytest.raises(ValueError, match="parents"):
        Draft([1, 2], [-1])
    with pytest.raises(ValueError, match=r"\[n, V\]"):
        Draft([1], [-1], torch.ones(2, 3))
