"""Fixtures for the momentum plugin's tests: tiny random models and the embedded model."""

from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))  # momentum_helpers (tests run with importlib mode)

from decodekit.testing import tiny_model  # noqa: E402
from decodekit.testing_fixtures import tok  # noqa: F401  (shared fixtures)

ARCHS = ["llama", "gpt2", "qwen2"]


@pytest.fixture(scope="session", params=ARCHS)
def tiny(request, tok):
    """(arch, model): a random 2-layer model with flatter distributions than the host default,
    so that the top-5 candidates compete and momentum often departs from greedy."""
    return request.param, tiny_model(request.param, tok, init_range=0.08)


@pytest.fixture(scope="session")
def embedded_model():
    from decodekit.models import load

    return load("smollm2-135m", "cpu", "float32")
