"""Composition with another installed plugin (classifier-free guidance), when it is installed."""

from __future__ import annotations

import re

import pytest

from decodekit import Pipeline
from decodekit.plugins import get_registry

REGEX = "[0-9a]+(?:\\.[0-9]+)?"


@pytest.fixture(scope="module")
def has_guidance():
    if "guidance" not in get_registry(refresh=True).plugins:
        pytest.skip("decodekit-guidance is not installed")


def _pipe(model, tok, extra=(), strategy="greedy"):
    return Pipeline(model, tokenizer=tok, decoding={"strategy": strategy, "max_new_tokens": 12},
                    plugins=[{"name": "guidance", "guidance_scale": 2.0}, *extra,
                             {"name": "grammar", "regex": REGEX, "cache": False}])


def test_grammar_after_guidance(has_guidance, ctok, cmodel):
    p = _pipe(cmodel, ctok, strategy="sample")
    for seed in range(6):
        r = p.generate("q", raw=True, seed=seed)
        if r.completions[0].finish_reason == "eos":
            assert re.fullmatch(REGEX, r.text)
        else:
            assert re.match("[0-9a]*", r.text).end() == len(r.text.split(".")[0])


def test_greedy_with_guidance_and_drafts_equals_without(has_guidance, ctok, cmodel, lookahead):
    plain = _pipe(cmodel, ctok)
    drafted = _pipe(cmodel, ctok, extra=[lookahead(len(ctok))])
    for prompt in ["q", "abc"]:
        a, b = plain.generate(prompt, raw=True), drafted.generate(prompt, raw=True)
        assert a.token_ids == b.token_ids and b.stats.drafted_tokens > 0
