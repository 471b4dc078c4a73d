"""The example plugin: discovered through its entry point, and it changes the output."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from decodekit import ConfigError, Pipeline


def test_decodekit_plugins_lists_it():
    out = subprocess.run([sys.executable, "-m", "decodekit", "plugins", "--json"],
                         capture_output=True, text=True, check=True).stdout
    names = {p["name"]: p for p in json.loads(out)["plugins"]}
    assert names["ban_words"]["distribution"] == "decodekit-ban-words"
    assert names["ban_words"]["hooks"] == ["mask"]


@pytest.mark.embedded
def test_a_pipeline_naming_it_changes_the_output():
    decoding = {"max_new_tokens": 12}
    plain = Pipeline("smollm2-135m", decoding=decoding).generate("What is the capital of France?")
    banned = Pipeline("smollm2-135m", decoding=decoding,
                      plugins=[{"name": "ban_words", "words": ["Paris"]}]).generate("What is the capital of France?")
    assert "Paris" in plain.text
    assert "paris" not in banned.text.lower() and banned.text != plain.text


def test_bad_options_are_config_errors():
    with pytest.raises(ConfigError, match=r"plugins\[0\] \(ban_words\): words"):
        Pipeline("smollm2-135m", plugins=[{"name": "ban_words", "words": []}])
