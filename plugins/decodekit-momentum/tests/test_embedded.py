"""On the embedded SmolLM2-135M model: the brute-force reference, exactness under speculation,
batches == singles, and less repetition than greedy."""

from __future__ import annotations

import pytest
from momentum_helpers import NgramProposer, OracleProposer, brute_momentum_generate

from decodekit import Pipeline

pytestmark = pytest.mark.embedded

RAW = ["The history of the city of Rome begins", "Scientists have discovered a new species of"]
N = 16


def pipe(embedded_model, proposer=None, n=N, **decoding):
    model, tok = embedded_model
    plugins = ([proposer] if proposer is not None else []) + [{"name": "momentum"}]
    return Pipeline(model, tokenizer=tok, decoding={"max_new_tokens": n, **decoding}, plugins=plugins)


@pytest.fixture(scope="module")
def truth(embedded_model):
    p = pipe(embedded_model)
    return [p.generate(x, raw=True).token_ids for x in RAW]


def test_matches_brute_force_reference(embedded_model, truth):
    model, tok = embedded_model
    for x, t in zip(RAW, truth):
        ids = tok(x)["input_ids"]
        assert t == brute_momentum_generate(model, ids, N)


def test_chat_prompt_matches_brute_force_reference(embedded_model):
    model, _ = embedded_model
    p = pipe(embedded_model, n=12)
    ids = p.encode("Write a short poem about rain.")  # the chat template's tokens are nodes too
    assert p.generate(ids).token_ids == brute_momentum_generate(model, ids, 12)


def test_greedy_exact_under_drafts(embedded_model, truth):
    model, tok = embedded_model
    for x, t in zip(RAW, truth):
        for proposer in (NgramProposer(n=4, match=1), OracleProposer([t], vocab=model.config.vocab_size, n=4)):
            res = pipe(embedded_model, proposer).generate(x, raw=True)
            assert res.token_ids == t, (x, type(proposer).__name__)
            assert res.stats.drafted_tokens > res.stats.accepted_draft_tokens


def test_oracle_drafts_are_accepted_sometimes(embedded_model, truth):
    model, _ = embedded_model
    res = pipe(embedded_model, OracleProposer(truth, vocab=model.config.vocab_size, n=4)).generate(RAW, raw=True)
    assert [c.token_ids for c in res.completions] == truth  # a batch of drafted rows == singles
    assert 0 < res.stats.accepted_draft_tokens < res.stats.drafted_tokens


def test_batch_equals_singles(embedded_model, truth):
    res = pipe(embedded_model).generate(RAW, raw=True)
    assert [c.token_ids for c in res.completions] == truth


def test_repeats_less_than_greedy(embedded_model):
    model, tok = embedded_model
    prompt = "1. Apples are red.\n2. Bananas are yellow.\n3."  # invites a list that loops under greedy
    greedy = Pipeline(model, tokenizer=tok, decoding={"max_new_tokens": 48}).generate(prompt, raw=True)
    mom = pipe(embedded_model, n=48).generate(prompt, raw=True)

    def distinct3(ids):
        grams = list(zip(ids, ids[1:], ids[2:]))
        return len(set(grams)) / len(grams)

    assert distinct3(mom.token_ids) > distinct3(greedy.token_ids)
