"""Test helpers on the path; the plugin is found through its entry point like any other."""

from __future__ import annotations

import os
import sys

# the test modules import speculative_helpers (pytest runs with --import-mode=importlib)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from decodekit.testing_fixtures import llama, tok  # noqa: E402, F401  (shared fixtures)


def pytest_configure(config):
    config.addinivalue_line("markers", "embedded: runs the embedded SmolLM2-135M model (real weights, slower)")
