"""One test per hook (the meta-test in test_docs.py checks that each hook has one)."""

from __future__ import annotations

import pytest
import torch

from decodekit import Decision, Draft, NoAllowedTokenError, Pipeline, PluginError, Sequence, Verdict, hookimpl
from decodekit.plugins import NoOptions, Registry, make_plugin_manager


@pytest.fixture
def pm(monkeypatch):
    monkeypatch.setenv("DECODEKIT_DISABLE_PLUGIN_AUTOLOAD", "1")
    monkeypatch.delenv("DECODEKIT_LOAD_PLUGINS", raising=False)
    return make_plugin_manager()


def pipe_with(model, tok, *plugins, **decoding):
    return Pipeline(model, tokenizer=tok, decoding={"max_new_tokens": 8, **decoding}, plugins=list(plugins))


def test_hook_register_plugins(pm):
    class Noop:
        """does nothing"""

        def __init__(self, options, pipeline):
            self.options = options

        @hookimpl
        def mask(self, logits):
            return None

    class Provider:
        @staticmethod
        @hookimpl
        def register_plugins(register):
            register("noop", Noop, options=NoOptions)

    pm.register(Provider, name="provider")
    reg = Registry(pm)
    info = reg.get("noop")
    assert info.provider == "provider" and info.hooks == ["mask"] and info.description == "does nothing"
    assert reg.get("greedy", "strategy").kind == "strategy"


def test_hook_register_models(pm, tmp_path):
    class Provider:
        @staticmethod
        @hookimpl
        def register_models(register):
            register("toy", lambda cache: cache / "toy", description="a toy")

    pm.register(Provider, name="provider")
    reg = Registry(pm)
    assert reg.models["toy"].loader(tmp_path) == tmp_path / "toy"
    assert "smollm2-135m" in reg.models


def test_hook_register_rewards(pm):
    class Provider:
        @staticmethod
        @hookimpl
        def register_rewards(register):
            register("length", lambda options, pipeline: (lambda texts: [float(len(t)) for t in texts]))

    pm.register(Provider, name="provider")
    reward = Registry(pm).get_reward("length").factory(None, None)
    assert reward(["ab", "abc"]) == [2.0, 3.0]


def test_hook_start(llama, tok):
    seen = []

    class Starter:
        @hookimpl
        def start(self, generation):
            assert generation.scratch(self) == {}  # fresh per call
            generation.scratch(self)["x"] = 1
            seen.append([list(t) for t in generation.tokens])

    pipe = pipe_with(llama, tok, Starter())
    pipe.generate(["ab", "abc"])
    pipe.generate("ab")
    assert seen == [[pipe.encode("ab"), pipe.encode("abc")], [pipe.encode("ab")]]


def test_hook_propose(llama, tok):
    class Repeat:
        @hookimpl
        def propose(self, generation):
            return [Draft.chain([t[-1]] * 3) for t in generation.tokens]

    res = pipe_with(llama, tok, Repeat()).generate("hello")
    plain = pipe_with(llama, tok).generate("hello")
    assert res.token_ids == plain.token_ids
    assert res.stats.drafted_tokens == 3 * res.stats.target_passes


def test_hook_rescore(llama, tok):
    order = []

    class Add:
        def __init__(self, name, token):
            self.name, self.token = name, token

        @hookimpl
        def rescore(self, logits):
            order.append(self.name)
            out = logits.clone()
            out[..., self.token] = out.max() + 100  # this plugin wants its token
            return out

    # the second rescorer sees the first one's output and wins: its token is chosen
    res = pipe_with(llama, tok, Add("first", 10), Add("second", 11)).generate("hi", max_new_tokens=3)
    assert res.token_ids == [11, 11, 11]
    assert order[:2] == ["first", "second"]


def test_hook_mask(llama, tok):
    class Only:
        def __init__(self, name, allowed):
            self.name, self.allowed = name, allowed

        @hookimpl
        def mask(self, logits):
            m = torch.zeros_like(logits, dtype=torch.bool)
            m[..., self.allowed] = True
            return m

    res = pipe_with(llama, tok, Only("a", [10, 11, 12]), Only("b", [11, 12, 13])).generate("hi")
    assert set(res.token_ids) <= {11, 12}
    with pytest.raises(NoAllowedTokenError, match="'a', 'b'"):
        pipe_with(llama, tok, Only("a", [10]), Only("b", [11])).generate("hi")
    with pytest.raises(NoAllowedTokenError, match="'empty' allow no token"):
        pipe_with(llama, tok, Only("empty", [])).generate("hi")


def test_hook_warp(llama, tok):
    class Check:
        name = "check"

        @hookimpl
        def mask(self, logits):
            m = torch.ones_like(logits, dtype=torch.bool)
            m[..., 10] = False
            return m

    class Flatten:
        name = "flatten"
        saw_mask = False

        @hookimpl
        def warp(self, logits):
            Flatten.saw_mask = bool(torch.isinf(logits[..., 10]).all())
            return torch.where(torch.isinf(logits), logits, torch.zeros_like(logits))

    res = pipe_with(llama, tok, Check(), Flatten(), strategy="sample", seed=0).generate("hi", max_new_tokens=30)
    assert Flatten.saw_mask  # warp runs after the masks
    assert 10 not in res.token_ids and len(set(res.token_ids)) > 5  # a flat distribution


def test_hook_verify(llama, tok):
    class Always7:
        @hookimpl
        def verify(self, drafts):
            return Decision([Verdict([], 7) for _ in drafts])

    assert pipe_with(llama, tok, Always7()).generate("hi").token_ids == [7] * 8


def test_hook_advance(llama, tok):
    calls = []

    class Counter:
        @hookimpl
        def advance(self, generation, decision):
            calls.append([len(t) for t in generation.tokens])

    res = pipe_with(llama, tok, Counter()).generate("hi", max_new_tokens=5, ignore_eos=True)
    assert len(calls) == res.stats.target_passes == 5
    n0 = len(pipe_with(llama, tok).encode("hi"))
    assert [c[0] for c in calls] == [n0 + k for k in range(1, 6)]  # tokens are committed before advance


def test_hook_finish(llama, tok):
    class Alternatives:
        @hookimpl
        def finish(self, generation):
            return [[Sequence(generation.new_tokens(0), 0.0), Sequence([5, 6], -1.0)]]

    res = pipe_with(llama, tok, Alternatives()).generate("hi")
    assert [s.token_ids for s in res.completions[0].sequences][1] == [5, 6]
    assert res.completions[0].sequences[1].text == tok.decode([5, 6])


def test_a_plugin_that_raises_is_named_with_its_hook(llama, tok):
    class Broken:
        name = "broken"

        @hookimpl
        def rescore(self, logits):
            raise KeyError("oops")

    with pytest.raises(PluginError, match="plugin 'broken' failed in hook 'rescore': KeyError"):
        pipe_with(llama, tok, Broken()).generate("hi")


def test_a_rescorer_that_leaves_no_finite_score_is_named(llama, tok):
    class KillAll:
        name = "kill"

        @hookimpl
        def rescore(self, logits):
            return torch.full_like(logits, float("-inf"))

    with pytest.raises(NoAllowedTokenError, match="no token has a finite score after the rescore plugin\\(s\\) 'kill'"):
        pipe_with(llama, tok, KillAll()).generate("hi")


def test_hook_finish_is_called_on_every_plugin_and_the_strategy_wins(llama, tok):
    called = []

    class Other:
        @hookimpl
        def finish(self, generation):
            called.append(True)
            return [[Sequence([9, 9], 0.0)]]

    res = pipe_with(llama, tok, Other(), strategy="beam", num_beams=2).generate("hi")
    assert called == [True]
    assert res.completions[0].sequences[0].token_ids != [9, 9]  # beam search's own answer
