"""On the embedded SmolLM2-135M: every proposer gives plain greedy's tokens, with a mask and a
rescore plugin active, on 10 varied prompts (one batch each, so that it stays quick); in float32
and in bfloat16 with oneDNN kernels."""

from __future__ import annotations

import pytest

from decodekit import Pipeline, onednn

from speculative_helpers import FLAT, PROPOSERS, BanTokens, Bias

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


needs_bf16 = pytest.mark.skipif(not onednn.bf16_available(), reason="no native bfloat16 on this CPU")


@pytest.fixture(scope="module")
def reference_bf16():
    plain = Pipeline("smollm2-135m", decoding={"strategy": "greedy", "max_new_tokens": N}, plugins=plugins(),
                     dtype="bfloat16", cpu_kernels="onednn")
    return [c.token_ids for c in plain.generate(PROMPTS).completions]


@needs_bf16
@pytest.mark.parametrize("proposer", PROPOSERS)
def test_embedded_bf16_greedy_is_token_identical(reference_bf16, proposer):
    """In bfloat16 with oneDNN's packed kernels and the pass-invariant attention, drafting on every
    step (flat costs) still gives plain bfloat16 greedy's tokens: one bfloat16 rounding of
    difference anywhere in a verify pass would change tokens here."""
    opts = {"proposer": proposer, "verify_costs": FLAT}
    if proposer == "draft_model":
        opts["draft"] = "smollm2-135m"
    pipe = Pipeline("smollm2-135m", decoding={"strategy": "greedy", "max_new_tokens": N},
                    plugins=[{"name": "speculative", **opts}, *plugins()], dtype="bfloat16", cpu_kernels="onednn")
    assert [c.token_ids for c in pipe.generate(PROMPTS).completions] == reference_bf16
