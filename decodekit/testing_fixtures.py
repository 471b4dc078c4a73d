"""pytest fixtures shared by the host's and the plugins' test suites.

A conftest imports the ones it needs (pytest registers fixtures found in a conftest's
namespace)::

    from decodekit.testing_fixtures import llama, tiny, tok  # noqa: F401

* ``tok``: the tiny character tokenizer (:func:`decodekit.testing.tiny_tokenizer`).
* ``tiny``: ``(arch, model)`` for each tiny random architecture: Llama, GPT-2, Qwen2.
* ``llama``: the tiny random Llama alone.

All are session-scoped: the models are built once and never modified by the engine.
"""

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
