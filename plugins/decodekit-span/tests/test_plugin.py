import pytest

from decodekit import Pipeline
from decodekit.errors import ConfigError
from decodekit.plugins import get_registry
from decodekit.testing import tiny_model


def test_registry_lists_span():
    info = get_registry(refresh=True).plugins["span"]
    assert info.kind == "plugin"


def test_missing_passage_is_an_error_naming_the_field(tok):
    with pytest.raises(ConfigError, match="passage"):
        Pipeline(tiny_model("llama", tok), tokenizer=tok, plugins=[{"name": "span"}])


def test_typo_is_an_error(tok):
    with pytest.raises(ConfigError, match="serch"):
        Pipeline(tiny_model("llama", tok), tokenizer=tok, plugins=[{"name": "span", "passage": "ab", "serch": "exact"}])


def test_exact_needs_room_for_eos(tok):
    pipe = Pipeline(tiny_model("llama", tok), tokenizer=tok, decoding={"max_new_tokens": 1},
                    plugins=[{"name": "span", "passage": "abc", "search": "exact"}])
    with pytest.raises(Exception, match="max_new_tokens >= 2"):
        pipe.generate("x")
