"""On the embedded SmolLM2-135M: every proposer gives plain greedy's tokens, with a mask and a
rescore plugin active, on 10 varied prompts (one batch each, so that it stays quick)."""

from __future__ import annotations

import pytest

from decodekit import Pipeline

from speculative_helpers import PROPOSERS, BanTokens, Bias

pytestmark = pytest.mark.embedded

PROMPTS = [
    "Fix the spelling: 'the quik brown fox jumpd over the lazzy dog'.",
    "Repeat exactly: alpha beta gamma delta epsilon zeta eta theta.",
    "Write a haiku about autumn.",
    "What is 17 times 23?",
    "Rename x to count in: def f(x): return x + x * 2",
    "Summarise in one sentence: Bees live in colonies with one queen and many workers.",
    "List three primary colours.",
    "Translate to French: good morning, my friend.",
    "Give me a JSON object with keys name and age.",
    "Why is the sky blue?",
]
N = 16
BAN = [28, 29, 30]        # a few token ids (punctuation-like in the SmolLM2 vocabulary)
BIAS = {260: 1.0, 314: 0.5}


def plugins():
    return [Bias(BIAS), BanTokens(BAN)]


@pytest.fixture(scope="module")
def reference():
    plain = Pipeline("smollm2-135m", decoding={"strategy": "greedy", "max_new_tokens": N}, plugins=plugins())
    return [c.token_ids for c in plain.generate(PROMPTS).completions]


@pytest.mark.parametrize("proposer", PROPOSERS)
def test_embedded_greedy_is_token_identical(reference, proposer):
    opts = {"proposer": proposer}
    if proposer == "draft_model":
        opts["draft"] = "smollm2-135m"  # the only real model here: the target drafts for itself
    pipe = Pipeline("smollm2-135m", decoding={"strategy": "greedy", "max_new_tokens": N},
                    plugins=[{"name": "speculative", **opts}, *plugins()])
    res = pipe.generate(PROMPTS)
    assert [c.token_ids for c in res.completions] == reference


def test_a_typo_fix_resumes_the_copy_after_each_edit():
    """Fixing typos breaks the lookup's match at every corrected word; the resumed drafts (the
    source from the next word start on) are proposed there, and the target accepts some."""
    pipe = Pipeline("smollm2-135m", decoding={"strategy": "greedy", "max_new_tokens": 48},
                    plugins=[{"name": "speculative", "proposer": "prompt_lookup", "verify_costs": {1: 1.0, 64: 1.0}}])
    text = ("The comittee met on tuesday to discus the new budjet. Several members argued that the "
            "library shoud recieve more funding.")
    plain = Pipeline("smollm2-135m", decoding={"strategy": "greedy", "max_new_tokens": 48})
    prompt = f"Correct the typos in this text and output the whole text:\n\n{text}"
    assert pipe.generate(prompt).token_ids == plain.generate(prompt).token_ids
    resumed = dict(pipe.plugins)["speculative"].lookup_stats["resume"]
    assert resumed.visits[0] > 0 and resumed.hits[0] > 0
