"""The plugin is installed, listed, and its options are validated."""

import pytest

from decodekit import ConfigError, Pipeline
from decodekit.plugins import get_registry


def test_listed_by_decodekit_plugins():
    reg = get_registry(refresh=True)
    assert "grammar" in reg.plugins
    assert reg.plugins["grammar"].kind == "plugin"


def test_cli_lists_it_when_available():
    import subprocess
    import sys

    pytest.importorskip("decodekit.cli")
    out = subprocess.run([sys.executable, "-m", "decodekit.cli", "plugins"], capture_output=True, text=True)
    assert out.returncode == 0 and "grammar" in out.stdout


@pytest.mark.parametrize("opts, needle", [
    ({}, "exactly one of"),
    ({"regex": "a", "choice": ["a"]}, "exactly one of"),
    ({"regex": "a", "colour": 1}, "colour"),
    ({"choice": []}, "choice"),
    ({"lark": "no_such_grammar"}, "no grammar named 'no_such_grammar'"),
    ({"regex": "a(b"}, "regex 'a(b'"),
    ({"regex": "a(b", "backend": "outlines"}, "regex 'a(b'"),
    ({"lark": "start: a\na: \"x\" b\n"}, "line 2, column 4"),
    ({"lark": "arithmetic", "start": "nope"}, "no rule 'nope'"),
    ({"json_schema": "{\"type\": "}, "not valid JSON"),
    ({"json_schema": {"type": "strin"}}, "not a valid JSON Schema"),
    ({"json_schema": {"type": "array", "uniqueItems": True, "minItems": 2}}, "uniqueItems"),  # not approximated
    ({"json_schema": {"not": {"pattern": "^a"}}}, "not"),
    ({"json_schema": {"type": "integer", "minimum": 3}, "backend": "outlines"}, "'minimum' at #"),
    ({"json_schema": {"type": "object", "patternProperties": {"^a": {}}}, "backend": "outlines"},
     "'patternProperties' at #"),
    ({"json_schema": {"allOf": [{"type": "string"}]}, "backend": "outlines"}, "'allOf' at #"),
    ({"lark": "arithmetic", "backend": "outlines"}, "llguidance for lark"),
])
def test_bad_options_are_clear_errors(ctok, cmodel, opts, needle):
    with pytest.raises(ConfigError) as err:
        Pipeline(cmodel, tokenizer=ctok, plugins=[{"name": "grammar", "cache": False, **opts}])
    assert needle in str(err.value)


def test_json_schema_from_a_file_and_a_lark_grammar_from_a_path(ctok, cmodel, tmp_path, grammars):
    import json
    import re

    path = tmp_path / "s.json"
    path.write_text(json.dumps({"enum": ["aa", "bb"]}))
    p = Pipeline(cmodel, tokenizer=ctok, decoding={"max_new_tokens": 8},
                 plugins=[{"name": "grammar", "json_schema": str(path), "cache": False}])
    assert str(path) in p.plugins[0][1].description
    assert p.generate("q", raw=True).text in {'"aa"', '"bb"'}
    p = Pipeline(cmodel, tokenizer=ctok, decoding={"max_new_tokens": 4},
                 plugins=[{"name": "grammar", "lark": str(grammars / "sygus_bv.lark"), "cache": False}])
    assert re.match(r"[(xyt#f]", p.generate("q", raw=True).text)
