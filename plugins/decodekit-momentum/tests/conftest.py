"""Fixtures for the momentum plugin's tests: tiny random models and the embedded model."""

from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))  # momentum_helpers (tests run with importlib mode)

from decodekit import DecodekitError  # noqa: E402
from decodekit.testing import tiny_model, tiny_tokenizer  # noqa: E402

ARCHS = ["llama", "gpt2", "qwen2"]


@pytest.fixture(scope="session", autouse=True)
def only_momentum():
    """Load only this distribution's entry point (plus the built-ins), whatever else is installed."""
    from decodekit.plugins import get_registry

    old = os.environ.get("DECODEKIT_LOAD_PLUGINS")
    os.environ["DECODEKIT_LOAD_PLUGINS"] = "momentum"
    get_registry(refresh=True)
    yield
    if old is None:
        del os.environ["DECODEKIT_LOAD_PLUGINS"]
    else:
        os.environ["DECODEKIT_LOAD_PLUGINS"] = old
    try:  # leave the registry as the environment says, for whatever runs next in this process
        get_registry(refresh=True)
    except DecodekitError:
        pass


@pytest.fixture(scope="session")
def tok():
    return tiny_tokenizer()


@pytest.fixture(scope="session", params=ARCHS)
def tiny(request, tok):
    """(arch, model): a random 2-layer model with flatter distributions than the host default,
    so that the top-5 candidates compete and momentum often departs from greedy."""
    return request.param, tiny_model(request.param, tok, init_range=0.08)


@pytest.fixture(scope="session")
def embedded_model():
    from decodekit.models import load

    return load("smollm2-135m", "cpu", "float32")
