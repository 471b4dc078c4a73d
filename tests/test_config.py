"""Pipeline files: formats, validation errors that name file/plugin/field, --set overrides."""

from __future__ import annotations

import json

import pytest

from decodekit import ConfigError
from decodekit.config import apply_overrides, read_file, validate

PIPELINE = {
    "model": "smollm2-135m",
    "decoding": {"strategy": "sample", "max_new_tokens": 16, "temperature": 0.7, "top_p": 0.9, "seed": 1},
}


@pytest.mark.parametrize("suffix,text", [
    (".yaml", "model: smollm2-135m\ndecoding: {strategy: sample, max_new_tokens: 16, temperature: 0.7, top_p: 0.9, seed: 1}\n"),
    (".toml", 'model = "smollm2-135m"\n[decoding]\nstrategy = "sample"\nmax_new_tokens = 16\ntemperature = 0.7\ntop_p = 0.9\nseed = 1\n'),
    (".json", json.dumps(PIPELINE)),
])
def test_three_formats_read_the_same(tmp_path, suffix, text):
    path = tmp_path / f"p{suffix}"
    path.write_text(text)
    res = validate(read_file(path), str(path))
    assert res.strategy.name == "sample"
    assert res.strategy_options.temperature == 0.7 and res.strategy_options.top_p == 0.9
    assert res.config.decoding.seed == 1


@pytest.mark.parametrize("data,message", [
    ({"modle": "x"}, r"f\.yaml: modle: unknown option; did you mean 'model'\?"),
    ({"decoding": {"strategy": "sample", "temprature": 1}}, r"decoding \(strategy 'sample'\): temprature: unknown option; did you mean 'temperature'"),
    ({"decoding": {"strategy": "sample", "temperature": "hot"}}, r"temperature: Input should be a valid number"),
    ({"decoding": {"strategy": "nucleus"}}, r"decoding\.strategy: unknown decoding strategy 'nucleus'"),
    ({"decoding": {"max_new_tokens": 0}}, r"decoding\.max_new_tokens: Input should be greater than or equal to 1"),
    ({"plugins": [{"name": "nope"}]}, r"plugins\[0\]: unknown plugin 'nope'"),
    ({"plugins": [{"opt": 1}]}, r"plugins\[0\]: missing 'name'"),
    ({"dtype": "float64"}, r"dtype: Input should be 'auto'"),
])
def test_errors_name_the_file_and_field(data, message):
    with pytest.raises(ConfigError, match=message):
        validate(data, "f.yaml")


def test_plugin_option_errors_name_the_plugin(monkeypatch):
    from pydantic import BaseModel, ConfigDict

    from decodekit.plugins import PluginInfo, get_registry

    class Opts(BaseModel):
        model_config = ConfigDict(extra="forbid")
        words: list[str]

    reg = get_registry()
    monkeypatch.setitem(reg.plugins, "toy", PluginInfo("toy", object, Opts, "plugin", "", "test"))
    with pytest.raises(ConfigError, match=r"f\.yaml: plugins\[0\] \(toy\): wrods: unknown option; did you mean 'words'"):
        validate({"plugins": [{"name": "toy", "words": [], "wrods": ["a"]}]}, "f.yaml")
    with pytest.raises(ConfigError, match=r"plugins\[0\] \(toy\): words: Field required"):
        validate({"plugins": [{"name": "toy"}]}, "f.yaml")


def test_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="no such pipeline file"):
        read_file(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: invalid YAML at line 2"):
        read_file(bad)
    badj = tmp_path / "bad.json"
    badj.write_text('{"model": }')
    with pytest.raises(ConfigError, match=r"bad\.json: invalid JSON at line 1, column 11"):
        read_file(badj)
    other = tmp_path / "p.ini"
    other.write_text("x")
    with pytest.raises(ConfigError, match="unknown pipeline format"):
        read_file(other)
    lst = tmp_path / "list.yaml"
    lst.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        read_file(lst)


def test_overrides():
    data = {"decoding": {"max_new_tokens": 8}, "plugins": [{"name": "x", "n": 1}]}
    out = apply_overrides(data, ["decoding.max_new_tokens=32", "decoding.temperature=0.5",
                                 "plugins.0.n=3", "chat=false", "decoding.stop=[\"\\n\\n\"]"])
    assert out["decoding"] == {"max_new_tokens": 32, "temperature": 0.5, "stop": ["\n\n"]}
    assert out["plugins"][0]["n"] == 3 and out["chat"] is False
    assert data["decoding"]["max_new_tokens"] == 8  # the input is not modified
    with pytest.raises(ConfigError, match="expected key=value"):
        apply_overrides(data, ["decoding.max_new_tokens"])
    with pytest.raises(ConfigError, match="has no element '5'"):
        apply_overrides(data, ["plugins.5.n=1"])


def test_pairs_that_cannot_compose_are_rejected_at_validation(monkeypatch):
    from decodekit.plugins import PluginInfo, get_registry

    class Proposer:
        pass

    class GreedyOnly:
        strategies = ("greedy",)

    reg = get_registry()
    monkeypatch.setitem(reg.plugins, "toy_proposer", PluginInfo("toy_proposer", Proposer, NoOpts, "plugin", "", "t",
                                                                hooks=["propose"]))
    monkeypatch.setitem(reg.plugins, "toy_greedy_only", PluginInfo("toy_greedy_only", GreedyOnly, NoOpts, "plugin", "", "t"))
    with pytest.raises(ConfigError, match=r"plugins\[0\] \(toy_proposer\) proposes drafts, but strategy 'beam' does not verify"):
        validate({"decoding": {"strategy": "beam"}, "plugins": [{"name": "toy_proposer"}]}, "f.yaml")
    validate({"decoding": {"strategy": "sample"}, "plugins": [{"name": "toy_proposer"}]}, "f.yaml")
    with pytest.raises(ConfigError, match=r"\(toy_greedy_only\) works only with strategy 'greedy', not 'sample'"):
        validate({"decoding": {"strategy": "sample"}, "plugins": [{"name": "toy_greedy_only"}]}, "f.yaml")


from pydantic import BaseModel as _BaseModel, ConfigDict as _ConfigDict  # noqa: E402


class NoOpts(_BaseModel):
    model_config = _ConfigDict(extra="forbid")


def test_a_bare_plugin_name_is_its_entry_with_defaults(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("plugins:\n  - speculative\n  - {name: speculative, proposer: token_recycling}\n")
    res = validate(read_file(path), str(path))
    (first, _, short), (second, _, full) = res.plugins
    assert (first, second) == ("speculative", "speculative#2")
    assert short == type(short)() and full.proposer == "token_recycling"
    with pytest.raises(ConfigError, match=r"plugins\[0\]: unknown plugin 'nope'"):
        validate({"plugins": ["nope"]}, "f.yaml")
