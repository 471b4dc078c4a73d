"""End to end on tiny random models: momentum equals a brute-force reference decoder, is exact
under speculation (chains and trees, drafts often wrong and sometimes right), and batches equal
singles."""

from __future__ import annotations

import pytest
from momentum_helpers import Ban, NgramProposer, OracleProposer, brute_momentum_generate

from decodekit import Pipeline

PROMPTS = ["once upon a time", "a", "the cat sat on the mat. the cat", "1, 2, 3, 4,"]
N = 32


def momentum_pipe(model, tok, proposer=None, **opts):
    plugins = ([proposer] if proposer is not None else []) + [{"name": "momentum", **opts}]
    return Pipeline(model, tokenizer=tok, decoding={"max_new_tokens": N, "ignore_eos": True}, plugins=plugins)


def rep2(ids: list[int]) -> float:
    grams = list(zip(ids, ids[1:]))
    return 1 - len(set(grams)) / len(grams)


@pytest.mark.parametrize("opts", [{}, {"k": 3, "alpha": 0.5, "resistance": "log"}])
def test_matches_brute_force_reference(tiny, tok, opts):
    arch, model = tiny
    kw = {}
    if opts:
        from decodekit_momentum import MomentumOptions

        o = MomentumOptions(**opts)
        kw = dict(k=o.k, alpha=o.alpha, table=o.resistance.values_for(o.max_ngram))
    pipe = momentum_pipe(model, tok, **opts)
    for p in PROMPTS:
        ids = pipe.encode(p)
        assert pipe.generate(ids).token_ids == brute_momentum_generate(model, ids, N, **kw), (arch, p)


def test_composes_with_a_mask_plugin(tiny, tok):
    """Candidates are the top k allowed tokens: equal to the reference run on masked logits."""
    arch, model = tiny
    banned = tok.convert_tokens_to_ids(list("aeiou"))
    plugins = [Ban(banned), {"name": "momentum"}]
    pipe = Pipeline(model, tokenizer=tok, decoding={"max_new_tokens": N, "ignore_eos": True}, plugins=plugins)
    spec = Pipeline(model, tokenizer=tok, decoding={"max_new_tokens": N, "ignore_eos": True},
                    plugins=[NgramProposer(n=3, match=1)] + plugins)
    for p in PROMPTS[:2]:
        ids = pipe.encode(p)
        want = brute_momentum_generate(model, ids, N, banned=banned)
        assert not set(want) & set(banned)
        assert pipe.generate(ids).token_ids == want, (arch, p)
        assert spec.generate(ids).token_ids == want, (arch, p)


def test_momentum_departs_from_greedy_and_repeats_less(tiny, tok):
    arch, model = tiny
    greedy = Pipeline(model, tokenizer=tok, decoding={"max_new_tokens": N, "ignore_eos": True})
    mom = momentum_pipe(model, tok)
    g = [greedy.generate(p).token_ids for p in PROMPTS]
    m = [mom.generate(p).token_ids for p in PROMPTS]
    assert g != m
    assert sum(map(rep2, m)) < sum(map(rep2, g)), arch


def test_greedy_exact_under_ngram_drafts(tiny, tok):
    arch, model = tiny
    plain = momentum_pipe(model, tok)
    spec = momentum_pipe(model, tok, NgramProposer(n=4, match=1))
    drafted = accepted = 0
    for p in PROMPTS:
        res = spec.generate(p)
        assert res.token_ids == plain.generate(p).token_ids, (arch, p)
        drafted += res.stats.drafted_tokens
        accepted += res.stats.accepted_draft_tokens
    assert 0 < accepted < drafted  # drafts were sometimes right, often wrong


@pytest.mark.parametrize("tree", [False, True])
def test_greedy_exact_under_oracle_drafts(tiny, tok, tree):
    """Drafts built from the true output with corruptions at every depth 0 .. n (and, for trees,
    the true branch as a second child): accepted lengths vary, and commits land mid-draft."""
    arch, model = tiny
    plain = momentum_pipe(model, tok)
    truth = [plain.generate(p).token_ids for p in PROMPTS]
    for p, t in zip(PROMPTS, truth):
        proposer = OracleProposer([t], vocab=len(tok), n=4, tree=tree)
        res = momentum_pipe(model, tok, proposer).generate(p)
        assert res.token_ids == t, (arch, p)
        assert 0 < res.stats.accepted_draft_tokens < res.stats.drafted_tokens
        assert res.stats.target_passes < N


@pytest.mark.parametrize("with_drafts", [False, True])
def test_batch_equals_singles(tiny, tok, with_drafts):
    arch, model = tiny
    proposer = NgramProposer(n=3, match=1) if with_drafts else None
    pipe = momentum_pipe(model, tok, proposer)
    batch = pipe.generate(PROMPTS)
    assert [c.token_ids for c in batch.completions] == [pipe.generate(p).token_ids for p in PROMPTS], arch


def test_batch_of_oracle_trees_equals_singles(tok):
    from decodekit.testing import tiny_model

    model = tiny_model("llama", tok, init_range=0.08)
    plain = momentum_pipe(model, tok)
    truth = [plain.generate(p).token_ids for p in PROMPTS]
    spec = momentum_pipe(model, tok, OracleProposer(truth, vocab=len(tok), n=3, tree=True))
    assert [c.token_ids for c in spec.generate(PROMPTS).completions] == truth
