"""The Python examples in the README and the guides run as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)


@pytest.mark.embedded
@pytest.mark.parametrize("doc", ["README.md", "docs/guide.md"])
def test_python_examples_run(doc, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    for block in python_blocks(ROOT / doc):
        exec(compile(block, doc, "exec"), {"__name__": "__docs__"})


def test_plugin_guide_token_state_example_runs(llama, tok):
    import torch

    from decodekit import Pipeline, TokenState, hookimpl

    block = next(b for b in python_blocks(ROOT / "docs" / "plugin-guide.md") if "class NoDoubleLetters" in b)
    ns = {"torch": torch}
    exec(compile(block, "plugin-guide.md", "exec"), ns)
    plugin = ns["NoDoubleLetters"](None, None)
    assert isinstance(plugin, TokenState) and hookimpl
    res = Pipeline(llama, tokenizer=tok, decoding={"max_new_tokens": 30, "ignore_eos": True},
                   plugins=[plugin]).generate("hello")
    ids = Pipeline(llama, tokenizer=tok).encode("hello")[-1:] + res.token_ids
    assert all(a != b for a, b in zip(ids, ids[1:]))
    plain = Pipeline(llama, tokenizer=tok, decoding={"max_new_tokens": 30, "ignore_eos": True}).generate("hello")
    assert any(a == b for a, b in zip(plain.token_ids, plain.token_ids[1:]))  # the plugin made a difference
