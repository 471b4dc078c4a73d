"""Shared fixtures: tiny random models (fast) and the embedded SmolLM2 model (real)."""

from __future__ import annotations

import pytest
import torch

from decodekit.testing_fixtures import llama, tiny, tok  # noqa: F401  (shared fixtures)


@pytest.fixture(scope="session")
def embedded():
    """The embedded SmolLM2-135M-Instruct pipeline (greedy), loaded once per session."""
    from decodekit import Pipeline

    torch.set_num_threads(max(1, torch.get_num_threads()))
    return Pipeline("smollm2-135m", decoding={"strategy": "greedy", "max_new_tokens": 24})
