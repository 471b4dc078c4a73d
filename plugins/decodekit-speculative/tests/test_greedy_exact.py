"""Greedy speculative decoding is token-identical to plain greedy decoding, with a mask and a
rescore plugin active, for every proposer; batches equal their rows run one by one."""

from __future__ import annotations

import pytest

from decodekit import Pipeline
from decodekit.testing import tiny_model

from speculative_helpers import FLAT, PROPOSERS, BanTokens, Bias, assert_batch_equals_singles, speculative

PROMPTS = [
    "hello world",
    "the cat sat on the mat. the cat sat on the",
    "abc abc abc abc",
    "1234567890 1234567890",
    '{"a": [1, 2], "b": {"c": "d"}}',
    "to be or not to be, that is",
    "z",
    "the quick brown fox jumps over the lazy dog",
    "aaaaaaaaaaaaaaaa",
    "def f(x): return x + 1\ndef g(x): return",
    "once upon a time",
]
DECODING = {"strategy": "greedy", "max_new_tokens": 24}
BAN = [7, 8, 30]          # three character ids of the tiny tokenizer
BIAS = {10: 1.5, 20: -2.0}


@pytest.fixture(scope="module", params=["llama", "gpt2", "qwen2"])
def models(request, tok):
    """(target, draft): two tiny random models of one architecture sharing the tokenizer."""
    return tiny_model(request.param, tok), tiny_model(request.param, tok, seed=1)


def plugins():
    return [Bias(BIAS), BanTokens(BAN)]


@pytest.mark.parametrize("proposer", PROPOSERS)
def test_greedy_is_token_identical_with_mask_and_rescore(tok, models, proposer):
    target, draft = models
    plain = Pipeline(target, tokenizer=tok, decoding=DECODING, plugins=plugins())
    want = [c.token_ids for c in plain.generate(PROMPTS).completions]
    # fixed flat costs: always draft, so that drafts are really checked; then the adaptive default
    for options in ({"verify_costs": FLAT, "draft_threshold": 0.0}, {}):
        pipe = speculative(target, tok, DECODING, proposer, draft=draft, extra=plugins(), **options)
        for _ in range(2):  # the second call starts from what the first learned (costs, matrix)
            got = pipe.generate(PROMPTS)
            assert [c.token_ids for c in got.completions] == want
            assert all(not set(c.token_ids) & set(BAN) for c in got.completions)
    flat = speculative(target, tok, DECODING, proposer, draft=draft, extra=plugins(),
                       verify_costs=FLAT, draft_threshold=0.0).generate(PROMPTS)
    assert flat.stats.drafted_tokens > 0


def test_self_draft_accepts_everything(tok, models):
    """A draft model equal to the target drafts exactly what greedy picks (rollback works)."""
    target, _ = models
    pipe = speculative(target, tok, {**DECODING, "ignore_eos": True}, "draft_model", draft=target,
                       extra=plugins(), verify_costs=FLAT, draft_threshold=0.0, max_draft_tokens=5)
    res = pipe.generate(PROMPTS[:3])
    plain = Pipeline(target, tokenizer=tok, decoding={**DECODING, "ignore_eos": True}, plugins=plugins())
    assert res.token_ids == plain.generate(PROMPTS[0]).token_ids
    # 5 drafted + 1 bonus token per pass, except where a row reaches max_new_tokens
    assert res.stats.mean_tokens_per_pass >= 4.5


@pytest.mark.parametrize("proposer", PROPOSERS)
def test_batch_equals_one_by_one(tok, proposer):
    """Rows accept different numbers of draft tokens, yet a batch gives each row's own tokens."""
    target, draft = tiny_model("llama", tok), tiny_model("llama", tok, seed=1)
    pipe = speculative(target, tok, DECODING, proposer, draft=draft, extra=plugins(),
                       verify_costs=FLAT, draft_threshold=0.0)
    assert_batch_equals_singles(pipe, PROMPTS[:6])


def test_no_draft_rides_on_a_bfloat16_prefill(tok):
    """In bfloat16 on a CPU the prompt's prefill is one attention call over the prompt
    (decodekit/invariant_attention.py): drafting starts with the second pass, so the prompt is
    computed as plain decoding computes it and the tokens stay plain greedy's."""
    import torch

    from decodekit.attention import use_cpu_attention

    model = tiny_model("llama", tok).to(torch.bfloat16)
    assert use_cpu_attention(model) == "decodekit_invariant"
    widths = []
    forward = model.forward

    def spy(*args, **kwargs):
        widths.append(kwargs["input_ids"].shape[1])
        return forward(*args, **kwargs)

    prompt = "abc abc abc abc abc abc"  # lookup finds a draft before the first pass
    plain = Pipeline(model, tokenizer=tok, decoding=DECODING).generate(prompt).token_ids
    model.forward = spy
    got = speculative(model, tok, DECODING, "prompt_lookup", verify_costs=FLAT).generate(prompt)
    assert got.token_ids == plain
    assert widths[0] == len(tok(prompt)["input_ids"])  # the prefill: the prompt alone
    assert max(widths[1:]) > 1 and got.stats.drafted_tokens > 0
