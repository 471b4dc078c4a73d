"""Fixtures: the tiny character tokenizer and random models, and the embedded model."""

from __future__ import annotations

import pytest

from decodekit.testing_fixtures import tiny, tok  # noqa: F401  (shared fixtures)

PASSAGE = "the quick brown fox jumps over the lazy dog."
EMBEDDED_PASSAGE = "The Eiffel Tower, completed in 1889, is 330 metres tall and stands in Paris."


@pytest.fixture(scope="session")
def smol():
    from decodekit import Pipeline

    return Pipeline("smollm2-135m", decoding={"max_new_tokens": 8})


@pytest.fixture(scope="session")
def passage():
    return PASSAGE


@pytest.fixture(scope="session")
def embedded_passage():
    return EMBEDDED_PASSAGE
