"""Every example pipeline validates and runs on the embedded model (small max_new_tokens)."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

from decodekit.config import read_file, validate

ROOT = Path(__file__).resolve().parents[1]
PIPELINES = sorted((ROOT / "examples" / "pipelines").iterdir())
sys.path.insert(0, str(ROOT / "examples"))


@pytest.mark.parametrize("path", PIPELINES, ids=[p.name for p in PIPELINES])
def test_example_pipeline_validates(path):
    validate(read_file(path), str(path))


@pytest.mark.embedded
@pytest.mark.parametrize("path", PIPELINES, ids=[p.name for p in PIPELINES])
def test_example_pipeline_runs(path):
    from run_examples import run

    budget = 48 if path.stem in ("grammar-json", "stack-json-extraction") else 12
    prompt, result, _ = run(path, budget)
    c = result.completions[0]
    assert c.token_ids and result.stats.new_tokens >= len(c.token_ids) > 0
    if path.stem in ("grammar-json", "stack-json-extraction") and c.finish_reason == "eos":
        json.loads(c.text)
    if path.stem == "span":
        assert c.text.strip() in "The Eiffel Tower in Paris was completed in 1889 for the World's Fair."
    if path.stem == "stack-aligned-structured":
        assert c.text in ["It will be sunny.", "It will rain.", "It will snow."] or c.finish_reason == "length"
    if path.stem == "grammar-lark":
        assert re.fullmatch(r"[0-9+\-*/(). ]*", c.text)
