"""The stack that matters most in practice: speculative + grammar (JSON Schema) + guidance + a
strategy. Greedy: token-identical to the same pipeline without ``speculative``. Sampling: the
distribution of outputs matches the pipeline without ``speculative`` (chi-square on a 2 x k
contingency table, significance 0.001)."""

from __future__ import annotations

import pytest
from scipy.stats import chi2_contingency

from decodekit import Pipeline
from decodekit.testing import tiny_model, tiny_tokenizer

pytest.importorskip("decodekit_speculative")
pytest.importorskip("decodekit_grammar")
pytest.importorskip("decodekit_guidance")

SCHEMA = {"enum": ["ab", "ba", "aab", "abab", "bb"]}
STACK = [
    {"name": "grammar", "json_schema": SCHEMA},
    {"name": "guidance", "mode": "cfg", "guidance_scale": 1.5, "negative_prompt": "zz", "negative_raw": True},
]
SPECULATIVE = {"name": "speculative", "proposer": "prompt_lookup", "adaptive": False, "ngram_min": 1}
PROMPT = 'pick one of "ab" "ba" "aab" "abab" "bb": "ab'


@pytest.fixture(scope="module")
def model_and_tok():
    tok = tiny_tokenizer()
    return tiny_model("llama", tok, init_range=0.3, seed=7), tok


def pipelines(model, tok, decoding):
    plain = Pipeline(model, tokenizer=tok, decoding=decoding, plugins=STACK)
    spec = Pipeline(model, tokenizer=tok, decoding=decoding, plugins=[SPECULATIVE, *STACK])
    return plain, spec


def test_full_stack_greedy_is_token_identical(model_and_tok):
    model, tok = model_and_tok
    plain, spec = pipelines(model, tok, {"strategy": "greedy", "max_new_tokens": 12})
    prompts = [PROMPT, 'say "ba" or "bb": "b', '"aab" "aab" "aab"', "abab abab"]
    drafted = 0
    for p in prompts:
        a, b = plain.generate(p), spec.generate(p)
        assert a.token_ids == b.token_ids, p
        assert a.text.strip('"') in SCHEMA["enum"] or a.completions[0].finish_reason == "length"
        drafted += b.stats.drafted_tokens
    assert drafted > 0
    batch = spec.generate(prompts)
    assert [c.token_ids for c in batch.completions] == [plain.generate(p).token_ids for p in prompts]


def test_full_stack_sampling_matches_the_distribution(model_and_tok):
    model, tok = model_and_tok
    plain, spec = pipelines(model, tok, {"strategy": "sample", "temperature": 1.3, "max_new_tokens": 12})
    n = 600
    counts = [{}, {}]
    accepted = 0
    for seed in range(n):
        for k, pipe in enumerate((plain, spec)):
            res = pipe.generate(PROMPT, seed=seed)
            counts[k][res.text] = counts[k].get(res.text, 0) + 1
            if k == 1:
                accepted += res.stats.accepted_draft_tokens
    keys = sorted(set(counts[0]) | set(counts[1]))
    assert all(k.strip('"') in SCHEMA["enum"] for k in keys)  # every sample obeys the schema
    assert len(keys) >= 3 and accepted > 0
    table = [[counts[0].get(k, 0) for k in keys], [counts[1].get(k, 0) for k in keys]]
    assert chi2_contingency(table).pvalue > 1e-3
