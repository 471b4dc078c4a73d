"""Speculative sampling + mask + CFG draws from exactly the distribution plain sampling does.

The exact law of the first two tokens, P(x1, x2) = p'(x1 | prompt) · p'(x2 | prompt x1) with
p' = softmax(mask(CFG mix) / T), is computed by enumeration with an uncached reference; samples
from plain decoding and from speculative decoding (deterministic drafts, partly accepted, the
third token truncated by max_new_tokens) are each tested against it with a chi-square
goodness-of-fit test at significance level 0.001 (cells with expected count < 5 lumped together).
"""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from decodekit import Pipeline

GAMMA, NEG, T, N = 1.5, "qq", 0.8, 800
SIGNIFICANCE = 1e-3


def exact_law(model, prompt: list[int], neg: list[int], last) -> dict[tuple[int, int], float]:
    def p_prime(prefix: list[int]) -> torch.Tensor:
        gen = prefix[len(prompt):]
        c = torch.log_softmax(last(model, prefix), -1).double()
        u = torch.log_softmax(last(model, neg + gen), -1).double()
        s = u + GAMMA * (c - u)
        s[prefix[-1]] = float("-inf")  # the no-repeat mask
        return torch.softmax(s / T, -1)

    p1 = p_prime(prompt)
    law = {}
    for x1 in torch.nonzero(p1 > 1e-7).flatten().tolist():
        p2 = p_prime(prompt + [x1])
        for x2 in torch.nonzero(p2 > 1e-9).flatten().tolist():
            law[(x1, x2)] = float(p1[x1] * p2[x2])
    return law


def chi_square_p(counts: Counter, law: dict[tuple[int, int], float], n: int) -> float:
    from scipy.stats import chisquare

    big = [k for k, p in law.items() if p * n >= 5]
    obs = [counts[k] for k in big]
    exp = [law[k] * n for k in big]
    rest_obs = n - sum(obs)
    rest_exp = n - sum(exp)
    if rest_exp > 0:
        obs.append(rest_obs)
        exp.append(rest_exp)
    exp = [e * n / sum(exp) for e in exp]  # renormalise away float error
    return float(chisquare(obs, exp).pvalue)


@pytest.mark.parametrize("speculative", [False, True])
def test_speculative_sampling_with_cfg_and_mask_is_exact(llama, tok, reference, no_repeat, script_proposer,
                                                         speculative):
    torch.manual_seed(0)
    pipe0 = Pipeline(llama, tokenizer=tok)
    prompt, neg = pipe0.encode("hello world"), pipe0.encode(NEG)
    law = exact_law(llama, prompt, neg, reference["last_logits"])
    assert abs(sum(law.values()) - 1) < 1e-4
    top = max(law, key=law.get)
    plugins: list = [no_repeat(), {"name": "guidance", "guidance_scale": GAMMA, "negative_prompt": NEG}]
    if speculative:  # propose the most likely pair: accepted in full, in part, or not at all
        plugins.insert(0, script_proposer([list(top)], k=2, vocab=len(tok)))
    pipe = Pipeline(llama, tokenizer=tok, plugins=plugins,
                    decoding={"strategy": "sample", "temperature": T, "max_new_tokens": 2})
    counts: Counter = Counter()
    accepted = 0
    for seed in range(N):
        res = pipe.generate(prompt, seed=seed)
        counts[tuple(res.token_ids)] += 1
        accepted += res.stats.accepted_draft_tokens
    if speculative:
        assert accepted > N // 10  # the drafts really were used
    p = chi_square_p(counts, law, N)
    assert p > SIGNIFICANCE, (p, counts.most_common(5), sorted(law.items(), key=lambda kv: -kv[1])[:5])
