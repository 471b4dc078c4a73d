"""The plugin is installed, listed and validated like any other."""

from __future__ import annotations

import pytest

from decodekit import ConfigError, Pipeline
from decodekit.config import validate
from decodekit.plugins import get_registry
from decodekit_diverse_beam import DiverseBeam, DiverseBeamOptions


def test_decodekit_lists_the_plugin():
    info = get_registry(refresh=True).plugins["diverse_beam"]
    assert info.kind == "strategy"
    assert info.distribution == "decodekit-diverse-beam"
    assert info.options is DiverseBeamOptions
    assert {"start", "verify", "finish"} <= set(info.hooks)


def test_a_pipeline_names_it_in_the_decoding_block():
    res = validate({"decoding": {"strategy": "diverse_beam", "num_beams": 6, "num_groups": 3,
                                 "diversity_penalty": 1.0}})
    assert res.strategy.name == "diverse_beam"
    assert res.strategy_options.num_groups == 3 and res.strategy_options.diversity == "hamming"


@pytest.mark.parametrize("options,field", [
    ({"num_beams": 6, "num_groups": 4}, "multiple of num_groups"),
    ({"num_beams": 2, "num_groups": 3}, "multiple of num_groups"),
    ({"diversity_penalty": -1.0}, "diversity_penalty"),
    ({"diversity": "cosine"}, "diversity"),
    ({"num_beams": 4, "num_return_sequences": 5}, "num_return_sequences"),
    ({"num_group": 2}, "num_group"),
])
def test_bad_options_are_errors_naming_the_field(options, field):
    with pytest.raises(ConfigError, match=field):
        validate({"decoding": {"strategy": "diverse_beam", **options}})


def test_rows_per_prompt_is_num_beams():
    s = DiverseBeam(DiverseBeamOptions(num_beams=6, num_groups=3))
    assert s.rows_per_prompt == 6 and s.group_size == 2


def test_stop_strings_are_refused(llama, tok):
    pipe = Pipeline(llama, tokenizer=tok, decoding={"strategy": "diverse_beam", "num_beams": 4, "num_groups": 2})
    with pytest.raises(ConfigError, match="stop"):
        pipe.generate("ab", stop=["x"])
