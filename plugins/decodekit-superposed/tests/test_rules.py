"""Unit tests of the two rules: the superposition and the n-gram interpolation filter."""

import math

import pytest
import torch

from decodekit_superposed import NGramModel, expand, select, superposed_embedding, superposition_weights


def test_weights_are_the_normalised_draft_probabilities():
    scores = torch.tensor([math.log(0.5), math.log(0.3), math.log(0.1)])
    w = superposition_weights(scores)
    assert torch.allclose(w, torch.tensor([5 / 9, 3 / 9, 1 / 9]), atol=1e-6)


def test_superposed_embedding_is_the_weighted_sum():
    torch.manual_seed(0)
    E = torch.randn(10, 4)
    w = torch.tensor([0.6, 0.3, 0.1])
    assert torch.allclose(superposed_embedding(E, [2, 7, 2], w), 0.7 * E[2] + 0.3 * E[7], atol=1e-6)
    assert torch.equal(superposed_embedding(E, [5], torch.tensor([1.0])), E[5])  # one draft: its own token
    with pytest.raises(ValueError):
        superposed_embedding(E, [1, 2], torch.tensor([1.0]))


def test_ngram_counts_and_interpolation():
    ng = NGramModel([[1, 2, 3, 1, 2, 4]], [2, 3])
    assert ng.prob([5, 1], 2, 2) == 1.0  # "1" is always followed by "2"
    assert ng.prob([1, 2], 3, 2) == 0.5 and ng.prob([1, 2], 4, 3) == 0.5
    assert ng.prob([9], 1, 2) == 0.0  # unseen context
    # floor 0.2 -> lambda = 0.4 per order; context ... 1 2, candidates 3 and 4
    p = ng.interpolated([7, 1, 2], [3, 4], 0.2)
    assert p == pytest.approx([0.1 + 0.4 * (0.5 + 0.5), 0.1 + 0.4 * (0.5 + 0.5)])
    assert sum(p) == pytest.approx(1.0)  # all of the context's mass is on the candidates
    assert ng.interpolated([9, 9], [3, 4, 5], 0.3) == pytest.approx([0.1, 0.1, 0.1])  # unseen: floor only
    with pytest.raises(ValueError, match="ngram_orders"):
        NGramModel([[1, 2]], [1])


def test_expand_scores_each_candidate_by_the_formula():
    V, k, alpha, floor = 6, 2, 0.4, 0.1
    lp = torch.log_softmax(torch.tensor([[0.0, 2.0, 1.0, -1.0, 0.5, -3.0],
                                         [0.0, 2.0, 1.0, -1.0, 0.5, -3.0]]), dim=-1)
    ng = NGramModel([[3, 1, 3, 2, 4, 2]], [2])
    scores, contexts = [-0.1, -0.7], [[9, 3], [9, 4]]
    got = {(c.draft, c.token): c.score for c in expand(lp, scores, contexts, ng, k, alpha, floor)}
    assert set(got) == {(0, 1), (0, 2), (1, 1), (1, 2)}  # top-2 tokens of each draft
    top = lp[0, [1, 2]].double()
    llm = top - torch.logsumexp(top, 0)
    for d in (0, 1):
        for r, x in enumerate((1, 2)):
            png = floor / 2 + (1 - floor) * ng.prob(contexts[d], x, 2)
            want = scores[d] + (1 - alpha) * float(llm[r]) + alpha * math.log(png)
            assert got[(d, x)] == pytest.approx(want, abs=1e-9)


def test_filter_prefers_the_draft_the_ngrams_support():
    # the LLM distribution is shared and the drafts tie; after "3" the corpus continues with "1"
    lp = torch.log_softmax(torch.tensor([[0.0, 1.0, 1.0, 0.0]] * 2), dim=-1)
    ng = NGramModel([[3, 1, 3, 1]], [2])
    plain = expand(lp, [0.0, 0.0], [[2], [3]], ng, 2, 0.0, 0.1)
    assert (plain[0].draft, plain[0].token) == (0, 1)  # alpha 0: a tie, draft order decides
    filtered = expand(lp, [0.0, 0.0], [[2], [3]], ng, 2, 0.5, 0.1)
    assert (filtered[0].draft, filtered[0].token) == (1, 1)


def test_select_keeps_k_running_and_finishes_eos_in_the_top_k():
    lp = torch.log_softmax(torch.tensor([[3.0, 2.0, 1.0, 0.0]]), dim=-1)
    ng = NGramModel([[1]], [2])
    cands = expand(lp, [0.0], [[5]], ng, 3, 0.0, 0.1)
    running, finished = select(cands, 2, eos={0})
    assert [c.token for c in running] == [1, 2]  # the best two non-EOS
    assert [c.token for c in finished] == [0]  # EOS ranked first: a finished sequence
    running, finished = select(cands, 2, eos={2})
    assert [c.token for c in running] == [0, 1] and finished == []  # EOS outside the top 2
