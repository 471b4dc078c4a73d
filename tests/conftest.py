"""Shared fixtures: tiny random models (fast) and the embedded SmolLM2 model (real)."""

from __future__ import annotations

import pytest
import torch

from decodekit.testing import tiny_model, tiny_tokenizer

ARCHS = ["llama", "gpt2", "qwen2"]


@pytest.fixture(scope="session")
def tok():
    return tiny_tokenizer()


@pytest.fixture(scope="session", params=ARCHS)
def tiny(request, tok):
    """(arch, model) for each tiny random architecture."""
    return request.param, tiny_model(request.param, tok)


@pytest.fixture(scope="session")
def llama(tok):
    return tiny_model("llama", tok)


@pytest.fixture(scope="session")
def embedded():
    """The embedded SmolLM2-135M-Instruct pipeline (greedy), loaded once per session."""
    from decodekit import Pipeline

    torch.set_num_threads(max(1, torch.get_num_threads()))
    return Pipeline("smollm2-135m", decoding={"strategy": "greedy", "max_new_tokens": 24})
