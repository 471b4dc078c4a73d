"""The embedded SmolLM2-135M model (49k byte-level BPE vocabulary): outputs validate."""

from __future__ import annotations

import json
import re
import time

import jsonschema
import lark
import pytest

from decodekit import Pipeline

pytestmark = pytest.mark.embedded

SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 12},
                   "age": {"type": "integer", "minimum": 0, "maximum": 120},
                   "tags": {"type": "array", "items": {"enum": ["a", "b", "c"]}, "maxItems": 2}},
    "required": ["name", "age"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def base():
    p = Pipeline("smollm2-135m", decoding={"strategy": "greedy", "max_new_tokens": 8})
    return p.model, p.tokenizer


def pipe(base, entry, strategy="sample", max_new_tokens=40, **decoding):
    model, tok = base
    return Pipeline(model, tokenizer=tok,
                    decoding={"strategy": strategy, "max_new_tokens": max_new_tokens, **decoding},
                    plugins=[{"name": "grammar", **entry}])


@pytest.mark.parametrize("backend", ["llguidance", "outlines"])
def test_json_schema_outputs_validate(base, backend):
    schema = SCHEMA if backend == "llguidance" else {**SCHEMA, "properties": {
        k: v for k, v in SCHEMA["properties"].items() if k != "age"} | {"age": {"type": "integer"}}}
    p = pipe(base, {"json_schema": schema, "backend": backend})
    for seed in range(2):
        r = p.generate("Describe a person as JSON.", seed=seed)
        assert r.completions[0].finish_reason == "eos", r.text
        jsonschema.validate(json.loads(r.text), schema)


def test_regex_and_choice(base):
    p = pipe(base, {"regex": r"\(\d{3}\) \d{3}-\d{4}"}, max_new_tokens=24)
    r = p.generate("Write a US phone number.", seed=0)
    assert re.fullmatch(r"\(\d{3}\) \d{3}-\d{4}", r.text)
    p = pipe(base, {"choice": ["Paris", "London", "Berlin"]}, strategy="greedy", max_new_tokens=8)
    assert p.generate("What is the capital of France?").text in {"Paris", "London", "Berlin"}


def test_arithmetic_grammar(base, grammars):
    p = pipe(base, {"lark": "arithmetic"}, max_new_tokens=24)
    parser = lark.Lark((grammars / "arithmetic.lark").read_text())
    for seed in range(2):
        r = p.generate("Write a short arithmetic expression.", seed=seed)
        if r.completions[0].finish_reason == "eos":
            parser.parse(r.text)
        else:  # cut by max_new_tokens: still a prefix of the language
            assert r.completions[0].finish_reason == "length"


def test_too_few_tokens_says_length(base):
    r = pipe(base, {"json_schema": SCHEMA}, max_new_tokens=3).generate("JSON please", seed=0)
    assert r.completions[0].finish_reason == "length" and r.text.startswith("{")


def test_auto_picks_the_engine_per_constraint(base, tmp_path, monkeypatch):
    monkeypatch.setenv("DECODEKIT_CACHE", str(tmp_path))
    email = r"[a-z]{1,12}@[a-z]{1,12}\.(com|org|net)"
    expected = [
        ({"regex": email}, "outlines"),  # states allow ~10k tokens: llguidance's walk takes ~100 µs
        ({"regex": r"\(\d{3}\) \d{3}-\d{4}"}, "llguidance"),  # a few tokens per state: cheap walks
        ({"choice": ["yes", "no", "maybe"]}, "llguidance"),
        ({"regex": ".{0,200}"}, "llguidance"),  # outlines-core: 80 s and 4 GB
        ({"regex": "^[a-z]+$"}, "llguidance"),  # anchors: outlines-core refuses them
        ({"json_schema": SCHEMA}, "llguidance"),
        ({"lark": "json"}, "llguidance"),
    ]
    for entry, backend in expected:
        assert pipe(base, entry).plugins[0][1].automaton.backend == backend, entry
    r = pipe(base, {"regex": email}, max_new_tokens=24).generate("Write an email address.", seed=0)
    assert r.completions[0].finish_reason == "eos" and re.fullmatch(email, r.text)


def test_outlines_index_is_cached_on_disk(base, tmp_path, monkeypatch):
    monkeypatch.setenv("DECODEKIT_CACHE", str(tmp_path))
    entry = {"regex": r"[A-Z][a-z]{2,8}( [A-Z][a-z]{2,8})?", "backend": "outlines"}
    t0 = time.perf_counter()
    first = pipe(base, entry)
    cold = time.perf_counter() - t0
    files = list((tmp_path / "grammar" / "outlines").rglob("*.pkl"))
    assert len(files) == 1
    second = pipe(base, entry)
    assert second.plugins[0][1].compile_time_s < max(0.5 * first.plugins[0][1].compile_time_s, 0.05)
    assert cold > 0
    a = first.generate("Name a person.", seed=3).token_ids
    assert a == second.generate("Name a person.", seed=3).token_ids
