import pytest

from decodekit import Pipeline
from decodekit.errors import ConfigError
from decodekit.plugins import get_registry


def test_registry_lists_superposed_as_a_strategy():
    assert get_registry(refresh=True).plugins["superposed"].kind == "strategy"


@pytest.mark.parametrize("bad, field", [
    ({"ngram_orders": [1, 2]}, "ngram_orders"),
    ({"corpus": "a", "corpus_file": "b"}, "corpus"),
    ({"num_drafts": 0}, "num_drafts"),
    ({"alpah": 0.3}, "alpah"),
])
def test_bad_options_name_the_field(llama, tok, bad, field):
    with pytest.raises(ConfigError, match=field):
        Pipeline(llama, tokenizer=tok, decoding={"strategy": "superposed", **bad})


def test_missing_corpus_file(llama, tok, tmp_path):
    with pytest.raises(ConfigError, match="corpus_file"):
        Pipeline(llama, tokenizer=tok, decoding={"strategy": "superposed", "corpus_file": str(tmp_path / "none.txt")}
                 ).generate("x")


def test_stop_strings_are_refused(llama, tok):
    pipe = Pipeline(llama, tokenizer=tok, decoding={"strategy": "superposed", "stop": ["."]})
    with pytest.raises(ConfigError, match="stop"):
        pipe.generate("x")
