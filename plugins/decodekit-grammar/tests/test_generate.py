"""End to end on tiny random models: outputs validate, batches, drafts, limits, errors."""

from __future__ import annotations

import json
import re

import jsonschema
import lark
import pytest
import torch

from decodekit import NoAllowedTokenError, Pipeline
from decodekit.testing import tiny_model


SCHEMA = {
    "type": "object",
    "properties": {"id": {"type": "integer", "minimum": 0, "maximum": 99},
                   "tag": {"enum": ["a", "b"]},
                   "ok": {"type": "boolean"}},
    "required": ["id", "tag"],
    "additionalProperties": False,
}
NUMBER = r"-?[0-9]+(\.[0-9]+)?"


def pipe(model, tok, entry, *extra, strategy="sample", max_new_tokens=40):
    return Pipeline(model, tokenizer=tok, decoding={"strategy": strategy, "max_new_tokens": max_new_tokens},
                    plugins=[*extra, {"name": "grammar", "cache": False, **entry}])


def finished(result):
    return result.completions[0].finish_reason == "eos"


@pytest.mark.parametrize("backend", ["llguidance", "outlines"])
@pytest.mark.parametrize("entry, check", [
    ({"regex": NUMBER}, lambda t: re.fullmatch(NUMBER, t)),
    ({"regex": "(?:cat|dog)s? [0-9]{1,2}"}, lambda t: re.fullmatch("(?:cat|dog)s? [0-9]{1,2}", t)),
    ({"choice": ["yes", "no", "maybe so"]}, lambda t: t in {"yes", "no", "maybe so"}),
    ({"json_schema": {"type": "object", "properties": {"n": {"type": "number"}, "s": {"type": "string", "maxLength": 5}},
                      "required": ["n", "s"], "additionalProperties": False}},
     lambda t: jsonschema.validate(json.loads(t), {"type": "object", "properties": {"n": {"type": "number"},
                                   "s": {"type": "string", "maxLength": 5}}, "required": ["n", "s"]}) is None),
])
def test_outputs_match_over_seeds(ctok, cmodel, nudger, backend, entry, check):
    p = pipe(cmodel, ctok, {**entry, "backend": backend}, nudger(ctok, "}\""))
    done = 0
    for seed in range(12):
        r = p.generate("q", raw=True, seed=seed)
        if finished(r):
            done += 1
            assert check(r.text), r.text
    assert done >= 6


def test_json_schema_with_bounds_validates(ctok, cmodel, nudger):
    p = pipe(cmodel, ctok, {"json_schema": SCHEMA}, nudger(ctok, "}\""))
    done = 0
    for seed in range(12):
        r = p.generate("q", raw=True, seed=seed)
        if finished(r):
            done += 1
            jsonschema.validate(json.loads(r.text), SCHEMA)
    assert done >= 6


@pytest.mark.parametrize("name, closers", [
    ("json", "}]\""), ("arithmetic", ")"), ("sql_select", ";"), ("sygus_slia", ")"), ("sygus_bv", ")"),
])
def test_shipped_grammars_outputs_parse(ctok, cmodel, nudger, grammars, name, closers):
    parser = lark.Lark((grammars / f"{name}.lark").read_text())  # Earley: the CFG's exact language
    p = pipe(cmodel, ctok, {"lark": name}, nudger(ctok, closers, 5.0), max_new_tokens=80)
    done = 0
    for seed in range(10):
        r = p.generate("q", raw=True, seed=seed)
        if finished(r):
            done += 1
            parser.parse(r.text)
    assert done >= 3, name


def test_start_rule_option(ctok, cmodel, nudger, grammars):
    p = pipe(cmodel, ctok, {"lark": "sygus_slia", "start": "ntint"}, nudger(ctok, ")", 5.0), max_new_tokens=60)
    parser = lark.Lark((grammars / "sygus_slia.lark").read_text(), start="ntint")
    outs = [p.generate("q", raw=True, seed=s) for s in range(8)]
    assert any(finished(r) for r in outs)
    for r in outs:
        if finished(r):
            parser.parse(r.text)


def test_inline_lark_and_greedy(ctok, cmodel, nudger):
    p = pipe(cmodel, ctok, {"lark": 'start: "a" start "b" | "ab"'}, nudger(ctok, "b"), strategy="greedy")
    text = p.generate("q", raw=True).text
    k = len(text) // 2
    assert text == "a" * k + "b" * k and k >= 1


def test_batch_rows_keep_their_own_state(ctok, cmodel):
    entry = {"regex": "(?:ab|ba)[0-9]+"}
    prompts = ["q", "hello", "zz top"]
    p = pipe(cmodel, ctok, entry, strategy="greedy", max_new_tokens=6)
    batch = p.generate(prompts, raw=True)
    for k, prompt in enumerate(prompts):
        alone = p.generate(prompt, raw=True)
        assert batch.completions[k].token_ids == alone.completions[0].token_ids
        assert re.match("(?:ab|ba)[0-9]*", batch.completions[k].text)


@pytest.mark.parametrize("entry", [{"regex": "[0-9a]+(?:\\.[0-9]+)?"}, {"lark": "arithmetic"},
                                   {"regex": "[0-9a]+", "backend": "outlines"}])
def test_greedy_with_drafts_equals_without(ctok, cmodel, lookahead, entry):
    plain = pipe(cmodel, ctok, entry, strategy="greedy", max_new_tokens=16)
    drafted = pipe(cmodel, ctok, entry, lookahead(len(ctok)), strategy="greedy", max_new_tokens=16)
    for prompt in ["q", "1+", "abc"]:
        a = plain.generate(prompt, raw=True)
        b = drafted.generate(prompt, raw=True)
        assert a.token_ids == b.token_ids
        assert b.stats.drafted_tokens > 0


def test_max_new_tokens_too_small_says_length(ctok, cmodel):
    p = pipe(cmodel, ctok, {"regex": "[a-z]{10}"}, max_new_tokens=3)
    r = p.generate("q", raw=True, seed=0)
    assert r.completions[0].finish_reason == "length"
    assert re.fullmatch("[a-z]{3}", r.text)


def test_no_token_can_continue_names_the_constraint(ctok, cmodel):
    # '€' is not in the character vocabulary: after 'a' nothing can follow
    p = pipe(cmodel, ctok, {"regex": "a€"}, strategy="greedy")
    with pytest.raises(NoAllowedTokenError) as err:
        p.generate("q", raw=True)
    assert "regex 'a€'" in str(err.value) and "'a'" in str(err.value)


def test_outlines_refuses_a_regex_the_vocabulary_cannot_spell(ctok, cmodel):
    from decodekit import ConfigError

    with pytest.raises(ConfigError, match="regex 'a€': cannot be compiled over this vocabulary"):
        pipe(cmodel, ctok, {"regex": "a€", "backend": "outlines"})


@pytest.mark.parametrize("backend", ["llguidance", "outlines"])
def test_logits_wider_than_the_vocabulary(ctok, backend):
    model = tiny_model("llama", ctok, vocab_size=len(ctok) + 37, seed=1)
    p = pipe(model, ctok, {"regex": "[0-9]{3}", "backend": backend}, strategy="greedy", max_new_tokens=5)
    plugin = p.plugins[0][1]
    m = plugin.allowed(plugin.initial_state([1]), len(ctok) + 37)
    assert m.shape == (len(ctok) + 37,) and not m[len(ctok):].any() and m.sum() == 10
    r = p.generate("q", raw=True)
    assert re.fullmatch("[0-9]{3}", r.text) and finished(r)


def test_eos_allowed_exactly_when_complete(ctok, cmodel):
    p = pipe(cmodel, ctok, {"regex": "ab?"}, strategy="greedy")
    g = p.plugins[0][1]
    V, eos = len(ctok), ctok.eos_token_id
    s0 = g.initial_state([])
    s1 = g.next_state(s0, ctok.convert_tokens_to_ids("a"))
    s2 = g.next_state(s1, ctok.convert_tokens_to_ids("b"))
    assert not g.allowed(s0, V)[eos] and g.allowed(s1, V)[eos] and g.allowed(s2, V)[eos]
    assert int(g.allowed(s2, V).sum()) == 1
    assert torch.equal(g.allowed(g.next_state(s0, eos), V), torch.ones(V, dtype=torch.bool))  # DEAD


class _Positions:
    """The parts of the host's Positions that the ``mask`` hook reads: ``states[i][j]`` per row."""

    def __init__(self, states, done=None):
        self._states = states
        self.rows = list(range(len(states)))
        self.generation = type("G", (), {"done": done or [False] * len(states), "tokenizer": None})()

    def states(self, plugin):
        return self._states

    def length(self, i):
        return len(self._states[i])


@pytest.mark.parametrize("backend", ["llguidance", "outlines"])
def test_mask_hook_returns_tensors_the_host_may_change(ctok, cmodel, backend):
    """One position (the plain decoding path, where the new row is handed over as it is) and
    several: writing into a returned mask never reaches the plugin's cached rows."""
    p = pipe(cmodel, ctok, {"regex": "ab?", "backend": backend}, strategy="greedy")
    g = p.plugins[0][1]
    V, eos, a = len(ctok), ctok.eos_token_id, ctok.convert_tokens_to_ids("a")
    logits = torch.zeros(1, 1, V)
    for _ in range(2):
        s0 = g.initial_state([])
        s1 = g.next_state(s0, a)
        first = g.mask(_Positions([[s0]]), logits)
        assert first.shape == (1, 1, V) and int(first.sum()) == 1 and first[0, 0, a]
        first.fill_(True)
        assert int(g.mask(_Positions([[s0]]), logits).sum()) == 1
        both = g.mask(_Positions([[s0, s1], [s1]], done=[False, False]), torch.zeros(2, 2, V))
        assert both[0, 0, a] and not both[0, 0, eos] and both[0, 1, eos] and both[1, 1].all()  # padding
        both.fill_(False)
        again = g.mask(_Positions([[s0, s1], [s1]]), torch.zeros(2, 2, V))
        assert again[0, 0, a] and again[0, 1, eos] and int(again[1, 0].sum()) == int(again[0, 1].sum())
        assert int(g.mask(_Positions([[s1]], done=[True]), logits).sum()) == V  # a finished row
