"""Exact search: equal to brute force, and never below greedy's span."""

import random

import pytest

from decodekit import Pipeline
from decodekit_span import best_span, build, sequence_logprob



def test_best_span_matches_brute_force(tiny, tok):
    _, model = tiny
    passage = "abcab d"
    a = build(tok, passage)
    prompt = tok("q: x?")["input_ids"]
    best = best_span(model, prompt, a.sources(3), [1], chunk=4)  # chunk < #sources: several passes
    brute = max(
        (sequence_logprob(model, prompt, list(toks[:l]) + [1]), tuple(toks[:l]))
        for toks, lo in a.sources(3) for l in range(lo, len(toks) + 1)
    )
    assert best.tokens == brute[1]
    assert best.logprob == pytest.approx(brute[0], abs=1e-4)


def test_exact_at_least_greedy_when_greedy_is_a_span(tiny, tok, passage):
    PASSAGE = passage
    _, model = tiny
    rng = random.Random(0)
    prompts = ["".join(rng.choice("abcdefgh ?") for _ in range(rng.randint(2, 9))) for _ in range(12)]
    greedy = Pipeline(model, tokenizer=tok, decoding={"max_new_tokens": 6},
                      plugins=[{"name": "span", "passage": PASSAGE}]).generate(prompts)
    exact = Pipeline(model, tokenizer=tok, decoding={"max_new_tokens": 6},
                     plugins=[{"name": "span", "passage": PASSAGE, "search": "exact"}]).generate(prompts)
    compared = 0
    for prompt, g, e in zip(prompts, greedy.completions, exact.completions):
        ids = tok(prompt)["input_ids"]
        assert e.finish_reason == "eos" and e.text in PASSAGE and e.text
        if g.finish_reason == "eos":  # greedy's output is a complete span + EOS
            compared += 1
            assert sequence_logprob(model, ids, e.token_ids) >= sequence_logprob(model, ids, g.token_ids) - 1e-4
    assert compared >= 3
