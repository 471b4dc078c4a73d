"""Options: defaults from the reference, the resistance forms, and clear errors for bad input."""

from __future__ import annotations

import math

import pytest

from decodekit import ConfigError, Pipeline
from decodekit_momentum import MomentumOptions


def test_defaults_are_the_reference_implementations():
    o = MomentumOptions()
    assert (o.k, o.alpha, o.max_ngram, o.include_prompt) == (5, 0.2, 5, True)
    assert o.resistance.values_for(5) == [0, 1, 3, 4, 5, 5]


@pytest.mark.parametrize("spec, expected", [
    ("constant", [0, 2, 2, 2, 2, 2]),
    ({"form": "constant", "value": 0.5}, [0, 0.5, 0.5, 0.5, 0.5, 0.5]),
    ("log", [0] + [math.log(1 + n, 6) / 0.2 for n in range(1, 6)]),   # the paper's log form
    ("exp", [0] + [1.5 ** n / 2 for n in range(1, 6)]),                # the paper's exp form
    ({"form": "exp", "base": 2, "scale": 1}, [0, 2, 4, 8, 16, 32]),
    ([0, 1, 1, 2, 2, 9], [0, 1, 1, 2, 2, 9]),                          # a bare list is a table
    ({"values": [0, 2, 2, 2, 2, 2]}, [0, 2, 2, 2, 2, 2]),
])
def test_resistance_forms(spec, expected):
    values = MomentumOptions(resistance=spec).resistance.values_for(5)
    assert values == pytest.approx(expected)


@pytest.mark.parametrize("opts, words", [
    ({"k": 0}, "k"),
    ({"alpha": -0.1}, "alpha"),
    ({"max_ngram": 0}, "max_ngram"),
    ({"resistance": [0, 1, 3]}, "max_ngram + 1 = 6 entries"),
    ({"max_ngram": 3}, "max_ngram + 1 = 4 entries"),        # the default table has 6 entries
    ({"resistance": [1, 1, 3, 4, 5, 5]}, "R(0) = 0"),
    ({"resistance": [0, -1, 3, 4, 5, 5]}, ">= 0"),
    ({"resistance": "cubic"}, "resistance"),
    ({"resistance": {"form": "log", "base": 1}}, "base"),
    ({"topk": 5}, "topk"),
])
def test_bad_options_name_the_option(llama_pipe_args, opts, words):
    with pytest.raises(ConfigError, match="momentum") as err:
        Pipeline(*llama_pipe_args[:1], tokenizer=llama_pipe_args[1], plugins=[{"name": "momentum", **opts}])
    assert words in str(err.value)


@pytest.mark.parametrize("strategy", ["sample", "beam"])
def test_other_strategies_are_refused_at_build_time(llama_pipe_args, strategy):
    model, tok = llama_pipe_args
    with pytest.raises(ConfigError, match=r"\(momentum\) works only with strategy 'greedy'"):
        Pipeline(model, tokenizer=tok, decoding={"strategy": strategy}, plugins=[{"name": "momentum"}])


def test_strategy_override_at_call_time_is_refused(llama_pipe_args):
    model, tok = llama_pipe_args
    pipe = Pipeline(model, tokenizer=tok, decoding={"max_new_tokens": 4}, plugins=[{"name": "momentum"}])
    with pytest.raises(ConfigError, match=r"\(momentum\) works only with strategy 'greedy', not 'sample'"):
        pipe.generate("abc", strategy="sample")
    assert len(pipe.generate("abc", ignore_eos=True).token_ids) == 4


@pytest.fixture(scope="module")
def llama_pipe_args(tok):
    from decodekit.testing import tiny_model

    return tiny_model("llama", tok), tok
