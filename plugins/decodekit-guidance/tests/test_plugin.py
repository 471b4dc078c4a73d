"""Registration and option validation of the ``guidance`` plugin."""

from __future__ import annotations

import pytest

from decodekit import ConfigError, Pipeline
from decodekit.plugins import get_registry


def test_plugin_is_listed():
    info = get_registry(refresh=True).plugins["guidance"]
    assert info.distribution == "decodekit-guidance"
    assert {"start", "rescore", "advance"} <= set(info.hooks)


def test_cli_lists_plugin():
    cli = pytest.importorskip("decodekit.cli", reason="the decodekit CLI is not written yet")
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.suppress(SystemExit):
        cli.main(["plugins"])
    assert "guidance" in buf.getvalue()


@pytest.mark.parametrize("entry, words", [
    ({"mode": "cfg", "alpha": 0.2}, ["alpha", "contrastive"]),
    ({"mode": "contrastive", "amateur_context": 3, "negative_prompt": "x"}, ["negative_prompt", "cfg"]),
    ({"mode": "contrastive"}, ["exactly one", "amateur"]),
    ({"mode": "contrastive", "amateur_context": 3, "amateur_skip_layers": [1]}, ["exactly one"]),
    ({"mode": "contrastive", "amateur_context": 0}, ["amateur_context"]),
    ({"mode": "contrastive", "amateur_context": 2, "alpha": 1.5}, ["alpha"]),
    ({"guidance_scal": 2.0}, ["guidance_scal", "unknown option"]),
    ({"mode": "contrastive", "amateur_skip_layers": [0]}, ["layer 0"]),
    ({"mode": "contrastive", "amateur_skip_layers": [7]}, ["out of range"]),
    ({"mode": "contrastive", "amateur": 3}, ["amateur"]),
    ({"negative_prompt": [{"role": "user"}, 5]}, ["negative_prompt"]),
])
def test_bad_options_name_the_option(llama, tok, entry, words):
    with pytest.raises(ConfigError) as e:
        Pipeline(llama, tokenizer=tok, plugins=[{"name": "guidance", **entry}])
    for w in words:
        assert w in str(e.value), (w, str(e.value))


def test_amateur_with_another_vocabulary_is_refused(llama, tok):
    from decodekit.testing import tiny_model

    other = tiny_model("llama", vocab_size=17)
    with pytest.raises(ConfigError, match="share the tokenizer"):
        Pipeline(llama, tokenizer=tok, plugins=[{"name": "guidance", "mode": "contrastive", "amateur": other}])


def test_negative_prompt_count_must_match_the_batch(llama, tok):
    pipe = Pipeline(llama, tokenizer=tok, decoding={"max_new_tokens": 2},
                    plugins=[{"name": "guidance", "negative_prompt": ["ab", None]}])
    with pytest.raises(ConfigError, match="negative_prompt has 2 entries for 3 prompts"):
        pipe.generate(["a", "b", "c"])


@pytest.mark.embedded
def test_docs_python_examples_run(capsys):
    import re
    from pathlib import Path

    doc = Path(__file__).resolve().parents[3] / "docs" / "plugins" / "guidance.md"
    blocks = re.findall(r"```python\n(.*?)```", doc.read_text(), flags=re.S)
    assert blocks
    for block in blocks:
        exec(compile(block, str(doc), "exec"), {"__name__": "__docs__"})
    out = capsys.readouterr().out
    assert out.strip()
