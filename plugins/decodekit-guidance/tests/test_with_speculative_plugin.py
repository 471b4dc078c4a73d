"""Guidance under the real ``speculative`` plugin (when installed): greedy output unchanged."""

from __future__ import annotations

import pytest

from decodekit import Pipeline
from decodekit.plugins import get_registry

PROMPTS = ["abcabcabc abc", "hello hello hello", "1, 2, 1, 2, 1,"]
GUIDANCE = [
    {"name": "guidance", "guidance_scale": 2.0, "negative_prompt": "zz"},
    {"name": "guidance", "mode": "contrastive", "amateur_context": 3, "beta": 0.5},
    {"name": "guidance", "mode": "contrastive", "amateur_skip_layers": [1], "beta": 0.5},
]


@pytest.mark.parametrize("proposer", ["prompt_lookup", "token_recycling"])
@pytest.mark.parametrize("guidance", GUIDANCE, ids=["cfg", "cd-context", "cd-skip"])
def test_guidance_under_speculative_plugin(tiny, tok, proposer, guidance):
    if "speculative" not in get_registry(refresh=True).plugins:
        pytest.skip("the speculative plugin is not installed")
    arch, model = tiny
    dec = {"max_new_tokens": 24}
    plain = Pipeline(model, tokenizer=tok, decoding=dec, plugins=[guidance])
    spec = Pipeline(model, tokenizer=tok, decoding=dec,
                    plugins=[{"name": "speculative", "proposer": proposer, "adaptive": False}, guidance])
    want = [c.token_ids for c in plain.generate(PROMPTS).completions]
    res = spec.generate(PROMPTS)
    assert [c.token_ids for c in res.completions] == want, arch
    assert res.stats.drafted_tokens > 0
