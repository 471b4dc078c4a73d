"""Plugin discovery: entry points, the allowlist and the off switch, and registry errors."""

from __future__ import annotations

import pytest
from decodekit import ConfigError, Pipeline, hookimpl
from decodekit.plugins import Registry, get_registry, make_plugin_manager


def test_builtins_are_registered_through_the_manager(monkeypatch):
    monkeypatch.setenv("DECODEKIT_DISABLE_PLUGIN_AUTOLOAD", "1")
    pm = make_plugin_manager()
    names = {name for name, _ in pm.list_name_plugin()}
    assert {"decodekit.builtins.greedy", "decodekit.builtins.sampling", "decodekit.builtins.beam"} <= names
    reg = Registry(pm)
    assert {"greedy", "sample"} <= set(reg.plugins)


def test_off_switch_loads_no_entry_points(monkeypatch):
    monkeypatch.setenv("DECODEKIT_DISABLE_PLUGIN_AUTOLOAD", "1")
    monkeypatch.delenv("DECODEKIT_LOAD_PLUGINS", raising=False)
    pm = make_plugin_manager()
    assert pm.list_plugin_distinfo() == []


def test_allowlist_names_unknown_entry_point(monkeypatch):
    monkeypatch.setenv("DECODEKIT_LOAD_PLUGINS", "no_such_plugin")
    with pytest.raises(ConfigError, match="no_such_plugin"):
        make_plugin_manager()


def test_empty_allowlist_loads_none(monkeypatch):
    monkeypatch.setenv("DECODEKIT_LOAD_PLUGINS", "")
    monkeypatch.delenv("DECODEKIT_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    assert make_plugin_manager().list_plugin_distinfo() == []


def test_unknown_plugin_and_strategy_are_config_errors():
    reg = get_registry()
    with pytest.raises(ConfigError, match="unknown plugin 'nope'"):
        reg.get("nope")
    with pytest.raises(ConfigError, match="unknown decoding strategy 'nope'.*greedy"):
        reg.get("nope", "strategy")


def test_duplicate_names_are_rejected(monkeypatch):
    monkeypatch.setenv("DECODEKIT_DISABLE_PLUGIN_AUTOLOAD", "1")
    pm = make_plugin_manager()

    class Dup:
        @staticmethod
        @hookimpl
        def register_plugins(register):
            register("greedy", object, kind="strategy")

    pm.register(Dup, name="dup")
    with pytest.raises(ConfigError, match="registered twice"):
        Registry(pm)


def test_a_hook_with_a_wrong_argument_is_rejected(llama, tok):
    class Typo:
        @hookimpl
        def rescore(self, logitz):
            return None

    with pytest.raises(ConfigError, match="plugin 'Typo'.*logitz"):
        Pipeline(llama, tokenizer=tok, plugins=[Typo()]).generate("hi")


def test_plugins_given_as_a_mapping_are_an_error_not_ignored(llama, tok):
    # iterated, a dict gives its keys: the plugin would silently not run
    with pytest.raises(ConfigError, match=r"plugins must be a list.*not a dict.*\[\{'name'"):
        Pipeline(llama, tokenizer=tok, plugins={"speculative": {"proposer": "prompt_lookup"}})


def test_an_item_that_is_no_plugin_is_named(llama, tok):
    with pytest.raises(ConfigError, match=r"plugins\[1\]: a int is neither an entry"):
        Pipeline(llama, tokenizer=tok, plugins=[{"name": "speculative"}, 3])


def test_a_plugin_name_stands_for_its_default_options(llama, tok):
    by_name = Pipeline(llama, tokenizer=tok, plugins=["speculative"], decoding={"max_new_tokens": 6})
    by_entry = Pipeline(llama, tokenizer=tok, plugins=[{"name": "speculative"}], decoding={"max_new_tokens": 6})
    assert [n for n, _ in by_name.plugins] == [n for n, _ in by_entry.plugins]
    assert by_name.generate("hi").token_ids == by_entry.generate("hi").token_ids
