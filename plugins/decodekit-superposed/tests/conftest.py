"""Fixtures: the tiny character tokenizer and random models, and the embedded model."""

from __future__ import annotations

import pytest

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
