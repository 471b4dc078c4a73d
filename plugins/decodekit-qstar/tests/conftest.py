"""Shared fixtures: a character-level tokenizer, tiny random models, and pipeline builders."""

from __future__ import annotations

import pytest

from decodekit import Pipeline
from decodekit.testing import tiny_model, tiny_tokenizer

PROMPTS = ["hello there", "the cat sat", "a b c d", "quick brown fox", "zebra", "one two"]


@pytest.fixture(scope="session")
def tok():
    return tiny_tokenizer()


@pytest.fixture(scope="session")
def model(tok):
    return tiny_model("llama", tok)


@pytest.fixture(scope="session")
def make_pipe(model, tok):
    """``make_pipe(plugins, **decoding)``: a pipeline on the tiny Llama (greedy, 16 tokens, seed 0)."""

    def make(plugins=(), **decoding):
        base = {"strategy": "greedy", "max_new_tokens": 16, "seed": 0}
        return Pipeline(model, tokenizer=tok, decoding={**base, **decoding}, plugins=list(plugins))

    return make


def qstar(mode="transfer_q", char="r", **options):
    """A ``qstar`` pipeline entry rewarding occurrences of ``char``."""
    defaults = {"k": 4, "num_rollouts": 2, "rollout_len": 4} if mode == "transfer_q" else {}
    return {"name": "qstar", "mode": mode, "reward": {"name": "count", "text": char}, **defaults, **options}


@pytest.fixture(scope="session")
def entry():
    """``entry(mode, char, **options)``: a qstar pipeline entry rewarding ``char``."""
    return qstar


@pytest.fixture(scope="session")
def prompts():
    return list(PROMPTS)
