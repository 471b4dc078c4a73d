"""``close_within_budget``: outputs that would be cut off at ``max_new_tokens`` close, valid."""

from __future__ import annotations

import json
import re

import jsonschema
import lark
import pytest

from decodekit import Draft, Pipeline, hookimpl
from decodekit_grammar import Grammar, GrammarOptions
from decodekit_grammar.closing import ESCAPED, INSIDE, OUTSIDE, json_quote

PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "tags": {"type": "array", "items": {"type": "string"}},
                   "age": {"type": "integer"}, "address": {"type": "object", "properties": {
                       "city": {"type": "string", "minLength": 2}}, "required": ["city"]}},
    "required": ["name", "tags", "age"],
}


def pipe(model, tok, entry, *extra, strategy="sample", max_new_tokens=60):
    return Pipeline(model, tokenizer=tok, decoding={"strategy": strategy, "max_new_tokens": max_new_tokens},
                    plugins=[*extra, {"name": "grammar", "cache": False, **entry}])


@pytest.mark.parametrize("text, where", [
    (b'{"a', INSIDE), (b'{"a"', OUTSIDE), (b'"a\\', ESCAPED), (b'"a\\"', INSIDE), (b'"a\\\\"', OUTSIDE),
    (b'"x\\"y": "', INSIDE), (b"[1, 2]", OUTSIDE),
])
def test_json_quote_tracks_strings_and_escapes(text, where):
    assert json_quote(OUTSIDE, text) == where
    # byte by byte gives the same as all at once
    w = OUTSIDE
    for c in text:
        w = json_quote(w, bytes([c]))
    assert w == where


def grammar(model, tok, **options):
    return Grammar(GrammarOptions(**options, close_within_budget=True, cache=False), Pipeline(model, tokenizer=tok))


def spell(g, walk):
    return b"".join(g.vocab.tokens[t] for t in walk).decode()


def test_walk_closes_a_json_document_minimally(ctok, cmodel):
    g = grammar(cmodel, ctok, json_schema=PERSON)
    walk = g.walker.walk(g.automaton, g.automaton.initial(), OUTSIDE, -1, limit=200)
    text = spell(g, walk)
    jsonschema.validate(json.loads(text), PERSON)
    assert text == '{"name": "", "tags": [], "age": 0}'
    assert g.walker.walk(g.automaton, g.automaton.initial(), OUTSIDE, -1, limit=len(walk) - 1) is None


def test_walk_writes_required_properties_not_optional_ones(ctok, cmodel):
    # the grammar keeps the declared order: "alpha" and "beta" (optional) may come before "zeta"
    schema = {"type": "object", "properties": {"alpha": {"type": "string"}, "beta": {"type": "number"},
                                               "zeta": {"type": "boolean"}}, "required": ["zeta"]}
    g = grammar(cmodel, ctok, json_schema=schema)
    assert spell(g, g.walker.walk(g.automaton, g.automaton.initial(), OUTSIDE, -1, limit=100)) == '{"zeta": false}'


def test_walk_from_a_state_along_it_is_its_tail(ctok, cmodel):
    g = grammar(cmodel, ctok, json_schema=PERSON)
    walk = g.walker.walk(g.automaton, g.automaton.initial(), OUTSIDE, -1, limit=200)
    state = g.initial_state([])
    for k, token in enumerate(walk):
        assert g.walker.walk(g.automaton, state.inner, state.where, state.previous, limit=200) == walk[k:]
        state = g.next_state(state, token)


def test_walk_cycles_out_of_a_repeating_pick(ctok, cmodel):
    # the lowest allowed token after "x" is "a" every time; the walk moves on to "y", then "z"
    g = grammar(cmodel, ctok, regex="x[a-y]*z", backend="llguidance")
    assert spell(g, g.walker.walk(g.automaton, g.automaton.initial(), OUTSIDE, -1, limit=50)) == "xyz"
    g = grammar(cmodel, ctok, regex="id:[a-z0-9-]+:[0-9]", backend="llguidance")
    text = spell(g, g.walker.walk(g.automaton, g.automaton.initial(), OUTSIDE, -1, limit=80))
    assert re.fullmatch("id:[a-z0-9-]+:[0-9]", text)


def test_no_walk_within_the_budget_leaves_the_mask_alone(ctok, cmodel):
    # the shortest output is 12 characters: with 6 new tokens nothing can close, nothing is forced
    entry = {"regex": "[a-z]{12}"}
    for seed in range(3):
        a = pipe(cmodel, ctok, entry, max_new_tokens=6).generate("q", raw=True, seed=seed)
        b = pipe(cmodel, ctok, {**entry, "close_within_budget": True}, max_new_tokens=6).generate(
            "q", raw=True, seed=seed)
        assert a.token_ids == b.token_ids and b.completions[0].finish_reason == "length"


@pytest.mark.parametrize("entry, check, budget", [
    ({"json_schema": PERSON}, lambda t: jsonschema.validate(json.loads(t), PERSON) is None, 60),
    ({"regex": r"\((?:[a-z]+ )*[a-z]+\)"}, lambda t: re.fullmatch(r"\((?:[a-z]+ )*[a-z]+\)", t), 16),
])
def test_outputs_close_within_the_budget(ctok, cmodel, entry, check, budget):
    cut = pipe(cmodel, ctok, entry, max_new_tokens=budget)
    closing = pipe(cmodel, ctok, {**entry, "close_within_budget": True}, max_new_tokens=budget)
    cut_off = 0
    for seed in range(16):
        plain = cut.generate("q", raw=True, seed=seed).completions[0]
        cut_off += plain.finish_reason == "length"
        c = closing.generate("q", raw=True, seed=seed).completions[0]
        assert c.finish_reason == "eos" and len(c.token_ids) <= budget, (c.finish_reason, c.text)
        assert check(c.text), c.text
        # the model's own tokens come first: the closed output extends a prefix of the free one
        common = next((k for k, (a, b) in enumerate(zip(plain.token_ids, c.token_ids)) if a != b),
                      min(len(plain.token_ids), len(c.token_ids)))
        assert common > 0
    assert cut_off >= 8  # without the option, most of these outputs are cut off


def test_lark_outputs_close_and_parse(ctok, cmodel, grammars):
    parser = lark.Lark((grammars / "arithmetic.lark").read_text(), start="start")
    p = pipe(cmodel, ctok, {"lark": "arithmetic", "close_within_budget": True}, max_new_tokens=24)
    for seed in range(8):
        c = p.generate("q", raw=True, seed=seed).completions[0]
        assert c.finish_reason == "eos", c.text
        parser.parse(c.text)


def test_outputs_far_from_the_budget_are_unchanged(ctok, cmodel, nudger):
    entry = {"regex": "[ab]{3}"}
    a = pipe(cmodel, ctok, entry, nudger(ctok, ""), max_new_tokens=40)
    b = pipe(cmodel, ctok, {**entry, "close_within_budget": True}, nudger(ctok, ""), max_new_tokens=40)
    for seed in range(10):
        assert a.generate("q", raw=True, seed=seed).token_ids == b.generate("q", raw=True, seed=seed).token_ids


class Oracle:
    """Drafts the next 5 tokens of known outputs (prompt -> token ids): under greedy they are all
    accepted exactly when the mask along the draft equals the one plain decoding saw."""

    name = "oracle"

    def __init__(self, outputs: dict[int, list[int]]):
        self.outputs = outputs  # last prompt token -> the output's token ids

    @hookimpl
    def propose(self, generation):
        drafts = []
        for b in range(generation.num_rows):
            n = generation.prompt_lengths[b]
            ref = self.outputs[generation.tokens[b][n - 1]]
            done = len(generation.tokens[b]) - n
            drafts.append(Draft.chain(ref[done:done + 5]) if done < len(ref) else None)
        return drafts


def test_drafts_and_batches_give_the_plain_output(ctok, cmodel):
    entry = {"json_schema": PERSON, "close_within_budget": True}
    plain = pipe(cmodel, ctok, entry, strategy="greedy", max_new_tokens=50)
    prompts = ["q", "ab", "xyz"]
    outputs = [plain.generate(p, raw=True).token_ids for p in prompts]
    assert all(json.loads(ctok.decode(o[:-1])) for o in outputs)  # closed: the last token is EOS
    oracle = Oracle({ctok(p, add_special_tokens=False)["input_ids"][-1]: o for p, o in zip(prompts, outputs)})
    drafted = pipe(cmodel, ctok, entry, oracle, strategy="greedy", max_new_tokens=50)
    for p, o in zip(prompts, outputs):
        r = drafted.generate(p, raw=True)
        assert r.token_ids == o
        assert r.stats.accepted_draft_tokens >= len(o) // 2  # the drafts along the closing walk were accepted
    batch = plain.generate(prompts, raw=True)
    assert [c.token_ids for c in batch.completions] == outputs
