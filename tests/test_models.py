"""Model resolution: aliases, local directories, clear errors, chat templates."""

from __future__ import annotations

import pytest

from decodekit import ConfigError, ModelNotFoundError, Pipeline
from decodekit.models import pick_device, pick_dtype, resolve


def test_missing_model_is_a_clear_error(tmp_path):
    with pytest.raises(ModelNotFoundError, match="nothing is downloaded"):
        resolve(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFoundError, match="no config.json"):
        resolve(str(tmp_path / "empty"))
    with pytest.raises(ModelNotFoundError, match=r"p\.yaml: model"):
        Pipeline(str(tmp_path / "nope"), source="p.yaml")


def test_local_directory_loads(tmp_path, llama, tok):
    llama.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    pipe = Pipeline(str(tmp_path / "m"), decoding={"max_new_tokens": 6})
    ref = Pipeline(llama, tokenizer=tok, decoding={"max_new_tokens": 6})
    assert pipe.generate("hello").token_ids == ref.generate("hello").token_ids


def test_device_and_dtype_errors():
    with pytest.raises(ConfigError, match="device 'tpu'"):
        pick_device("tpu")
    with pytest.raises(ConfigError, match="dtype 'float8'"):
        pick_dtype("float8", pick_device("cpu"))
    assert str(pick_device("auto")) in ("cpu", "cuda")


def test_model_object_needs_a_tokenizer(llama):
    with pytest.raises(ConfigError, match="needs its tokenizer"):
        Pipeline(llama)


@pytest.mark.embedded
def test_embedded_alias_uses_the_chat_template(embedded):
    ids = embedded.encode("Hi there")
    text = embedded.tokenizer.decode(ids)
    assert "<|im_start|>user" in text and text.rstrip().endswith("<|im_start|>assistant")
    raw = embedded.encode("Hi there", raw=True)
    assert embedded.tokenizer.decode(raw) == "Hi there"
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}]
    assert "Be brief." in embedded.tokenizer.decode(embedded.encode(msgs))
