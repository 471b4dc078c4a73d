"""Fixtures: the shared tiny character tokenizer and random models."""

from __future__ import annotations

from decodekit.testing_fixtures import llama, tiny, tok  # noqa: F401  (shared fixtures)

