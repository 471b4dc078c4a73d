"""The plugin and its rewards are registered, and bad options are errors that name the option."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from decodekit import ConfigError
from decodekit.plugins import get_registry

REWARD_NAMES = {"count", "keywords", "readability", "judge", "classifier", "callable"}


def test_decodekit_plugins_lists_qstar_and_its_rewards():
    out = subprocess.run([sys.executable, "-m", "decodekit.cli", "plugins", "--json"],
                         capture_output=True, text=True, check=True).stdout
    data = json.loads(out)
    plugins = {r["name"]: r for r in data["plugins"]}
    assert plugins["qstar"]["distribution"] == "decodekit-qstar"
    assert plugins["qstar"]["kind"] == "plugin"
    rewards = {r["name"]: r for r in data["rewards"]}
    assert REWARD_NAMES <= set(rewards)
    assert all(rewards[n]["distribution"] == "decodekit-qstar" for n in REWARD_NAMES)


def test_plugin_is_listed():
    reg = get_registry(refresh=True)
    info = reg.plugins["qstar"]
    assert info.kind == "plugin"
    assert info.distribution == "decodekit-qstar"
    assert {"rescore", "start", "advance", "finish"} <= set(info.hooks)


def test_rewards_are_registered_and_listed():
    reg = get_registry(refresh=True)
    assert REWARD_NAMES <= set(reg.rewards)
    for name in REWARD_NAMES:
        info = reg.get_reward(name)
        assert info.provider and info.description
        assert info.distribution == "decodekit-qstar"


def test_registered_reward_builds_and_scores():
    info = get_registry(refresh=True).get_reward("count")
    reward = info.factory(info.options(text="ab"), None)
    assert reward(["abab", "", "xab"]) == [2.0, 0.0, 1.0]


@pytest.mark.parametrize("entry, needle", [
    ({"name": "qstar"}, "reward"),  # required
    ({"name": "qstar", "reward": "nope"}, "unknown reward 'nope'"),
    ({"name": "qstar", "reward": {"name": "count"}}, "reward 'count': text"),
    ({"name": "qstar", "reward": {"name": "count", "text": "a", "typo": 1}}, "typo: unknown option"),
    ({"name": "qstar", "reward": {"text": "a"}}, "needs 'name'"),
    ({"name": "qstar", "reward": "readability", "k": 0}, "k"),
    ({"name": "qstar", "reward": "readability", "beta": 0}, "beta"),
    ({"name": "qstar", "reward": "readability", "mode": "best"}, "mode"),
    ({"name": "qstar", "reward": "readability", "mode": "args", "baseline_reward": "readability"},
     "baseline_reward applies to mode: transfer_q"),
    ({"name": "qstar", "reward": "readability", "num_rolouts": 2}, "num_rolouts: unknown option"),
])
def test_bad_options_name_the_field(make_pipe, entry, needle):
    with pytest.raises(ConfigError) as e:
        make_pipe([entry])
    assert needle in str(e.value)
    assert "qstar" in str(e.value)


def test_bad_callable_is_a_config_error(make_pipe):
    with pytest.raises(ConfigError, match="callable: cannot import module"):
        make_pipe([{"name": "qstar", "reward": {"name": "callable", "callable": "no_such_mod_x:f"}}])


def test_baseline_with_another_vocabulary_is_refused(make_pipe, tmp_path):
    from decodekit.testing import tiny_model, tiny_tokenizer

    other_tok = tiny_tokenizer("abc")
    tiny_model("llama", other_tok).save_pretrained(tmp_path)
    other_tok.save_pretrained(tmp_path)
    with pytest.raises(ConfigError, match="tokenizer differs"):
        make_pipe([{"name": "qstar", "reward": "readability", "baseline": str(tmp_path)}])
