"""Both backends against ground truth, model-free: ``re.fullmatch`` and ``jsonschema``.

The vocabulary mixes single characters with multi-character tokens that straddle the places
outlines-core 0.2.14 gets wrong (``1.``, ``.5``, ``é`` split into two partial UTF-8 bytes).
Hypothesis generates regexes and schemas; random walks through each automaton produce outputs.
"""

from __future__ import annotations

import json
import random
import re
import string

import jsonschema
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from decodekit_grammar import schema as schemas
from decodekit_grammar.constraints import Constraint
from decodekit_grammar.options import GrammarOptions
from decodekit_grammar.vocab import TokenVocab

BACKENDS = ["llguidance", "outlines"]
SINGLE = list(string.ascii_lowercase + string.digits + " .,:;-+{}[]\"_\\/")
MULTI = ["1.", ".5", "12", "ab", "ba", "a1", "..", "\":", "{\"", "\", \"", "true", "false", "null", ": ", ", "]
E_ACUTE = "é".encode()  # two bytes, each its own token


def make_vocab() -> TokenVocab:
    tokens: list[bytes | None] = [None, None] + [c.encode() for c in SINGLE] + [m.encode() for m in MULTI]
    tokens += [E_ACUTE[:1], E_ACUTE[1:]]
    index = {t: i for i, t in enumerate(tokens) if t}

    def encode(text: str) -> list[int]:
        return [index[bytes([b])] for b in text.encode()]

    return TokenVocab(tokens, eos_token_id=1, bos_token_id=None, special_ids=[0, 1], key="test-vocab-1", encode=encode)


VOCAB = make_vocab()
IDS = {t: i for i, t in enumerate(VOCAB.tokens) if t}


def compile_(backend: str, **opts):
    return Constraint.from_options(GrammarOptions(**opts)).compile(VOCAB, backend, None)


def walk_bytes(automaton, data: bytes, rng: random.Random, any_segmentation: bool = True):
    """Feed ``data`` as a random segmentation into vocabulary tokens; None if a token is refused.

    ``any_segmentation=False`` picks only among the tokens the mask allows (llguidance may refuse
    a token that its tokenizer would never produce there, e.g. a multi-character token at the end
    of the match: fewer tokenizations, never an invalid output)."""
    state, k = automaton.initial(), 0
    while k < len(data):
        options = [t for t in IDS if data.startswith(t, k)]
        if not any_segmentation:
            options = [t for t in options if automaton.allowed(state)[IDS[t]]] or options
        tok = rng.choice(options)
        if not automaton.allowed(state)[IDS[tok]]:
            return None
        state = automaton.step(state, IDS[tok])
        assert state is not None, "allowed() and step() disagree"
        k += len(tok)
    return state


def random_walk(automaton, rng: random.Random, max_steps: int = 120, stop: float = 0.4) -> bytes | None:
    """Sample tokens uniformly among the allowed ones; stop with probability ``stop`` when accepting."""
    state, out = automaton.initial(), b""
    for _ in range(max_steps):
        allowed = [i for i, ok in enumerate(automaton.allowed(state)) if ok]
        if automaton.accepting(state) and (not allowed or rng.random() < stop):
            return out
        assert allowed, "a live state with no allowed token and no end"
        closing = [i for i in allowed if VOCAB.tokens[i] in (b"}", b"]", b"\"")]
        t = rng.choice(closing if closing and rng.random() < 0.3 else allowed)
        out += VOCAB.tokens[t]
        state = automaton.step(state, t)
    return None


# -- the listed outlines-core pitfalls -----------------------------------------------------------

def test_raw_outlines_drops_dot_after_digit_and_ours_does_not():
    from outlines_core import Index, Vocabulary

    raw = Index(r"[0-9]+(\.[0-9]+)?", Vocabulary(1, VOCAB.by_bytes()))
    after_1 = raw.get_next_state(raw.get_initial_state(), IDS[b"1"])
    assert IDS[b"."] not in raw.get_allowed_tokens(after_1)  # the pitfall, as shipped in 0.2.14
    for backend in BACKENDS:
        a = compile_(backend, regex=r"[0-9]+(\.[0-9]+)?")
        s = a.step(a.initial(), IDS[b"1"])
        assert a.allowed(s)[IDS[b"."]] and a.allowed(s)[IDS[b".5"]] and a.accepting(s)
        assert a.allowed(a.initial())[IDS[b"1."]]
        assert not a.accepting(a.step(s, IDS[b"."]))


def test_partial_utf8_tokens_after_a_match():
    for backend in BACKENDS:
        a = compile_(backend, regex="é+")
        s = walk_bytes(a, "é".encode(), random.Random(0))
        assert s is not None and a.accepting(s)
        assert a.allowed(s)[IDS[E_ACUTE[:1]]], backend  # another é may start
        assert not a.allowed(s)[IDS[E_ACUTE[1:]]]


def test_raw_outlines_eos_raises_and_ours_never_feeds_it():
    from outlines_core import Guide, Index, Vocabulary

    g = Guide(Index("ab", Vocabulary(1, VOCAB.by_bytes())))
    g.advance(IDS[b"ab"])
    assert 1 in g.get_tokens()
    with pytest.raises(ValueError):
        g.advance(1)
    for backend in BACKENDS:  # ours: EOS is never part of allowed(); accepting() says when it may come
        a = compile_(backend, regex="ab")
        assert not a.allowed(a.initial())[1] and not a.accepting(a.initial())
        assert a.accepting(a.step(a.initial(), IDS[b"ab"]))


# -- backend: auto -----------------------------------------------------------------------------------

def test_auto_compiles_json_schema_and_lark_with_llguidance():
    assert compile_("auto", json_schema={"type": "integer"}).backend == "llguidance"
    assert compile_("auto", lark='start: "a"+').backend == "llguidance"


def test_auto_gives_regexes_whose_states_allow_many_tokens_to_outlines(monkeypatch):
    from decodekit_grammar.backends import outlines

    # this vocabulary is tiny: every state allows a few tokens, llguidance's walk is cheap
    assert compile_("auto", regex="[ab]+").backend == "llguidance"
    monkeypatch.setattr(outlines, "AUTO_MIN_DENSITY", 1)
    assert compile_("auto", regex="[ab]+").backend == "outlines"
    assert compile_("auto", choice=["ab", "ba1"]).backend == "outlines"
    a = compile_("auto", regex=r"[0-9]+(\.[0-9]+)?")  # the outlines pitfall, worked around
    assert a.backend == "outlines" and a.allowed(a.step(a.initial(), IDS[b"1"]))[IDS[b"."]]


def test_auto_falls_back_to_llguidance_with_its_error_messages(monkeypatch):
    from decodekit_grammar.backends import outlines

    monkeypatch.setattr(outlines, "AUTO_MIN_DENSITY", 1)
    assert compile_("auto", regex="^ab$").backend == "llguidance"  # outlines-core refuses anchors
    assert compile_("auto", regex="a€").backend == "llguidance"  # nor can outlines spell it here
    for bad in ["a(b", "[z-a]", "a{2,1}"]:
        with pytest.raises(ValueError) as auto:
            compile_("auto", regex=bad)
        with pytest.raises(ValueError) as llg:
            compile_("llguidance", regex=bad)
        assert str(auto.value) == str(llg.value)


def test_auto_keeps_large_automata_away_from_outlines(monkeypatch):
    """The index of ``.{0,200}`` takes outlines-core 80 s and 4 GB on a 49k vocabulary; ``auto``
    must decide without building it (or even the byte-level automaton of ``\\w{0,100}``)."""
    import time

    from decodekit_grammar.backends import outlines

    monkeypatch.setattr(outlines, "AUTO_MIN_DENSITY", 1)
    t0 = time.perf_counter()
    for regex in [".{0,200}", r"\w{0,100}", r"(?:\w{0,50} ){0,50}", "[ab]{0,300}", "(?:[ab]{0,20}1){0,20}"]:
        assert compile_("auto", regex=regex).backend == "llguidance", regex
    assert time.perf_counter() - t0 < 5


# -- Hypothesis: regexes ---------------------------------------------------------------------------

ATOMS = st.sampled_from(["a", "b", "1", r"\.", "[ab]", "[0-9]", "é", "[a-c1]"])


def regexes():
    def extend(inner):
        return st.one_of(
            st.tuples(inner, inner).map(lambda p: p[0] + p[1]),
            st.tuples(inner, inner).map(lambda p: f"(?:{p[0]}|{p[1]})"),
            inner.map(lambda r: f"(?:{r})?"),
            inner.map(lambda r: f"(?:{r})*"),
            inner.map(lambda r: f"(?:{r})+"),
            st.tuples(inner, st.integers(0, 2), st.integers(0, 2)).map(
                lambda p: f"(?:{p[0]}){{{p[1]},{p[1] + p[2]}}}"),
        )
    return st.recursive(ATOMS, extend, max_leaves=6)


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(regex=regexes(), data=st.data())
def test_regex_language_matches_re(backend, regex, data):
    a = compile_(backend, regex=regex)
    rng = random.Random(data.draw(st.integers(0, 10**6)))
    for _ in range(5):  # strings of the language: every segmentation is accepted, ending in a match
        s = data.draw(st.from_regex(re.compile(regex), fullmatch=True).filter(lambda x: len(x) <= 12))
        state = walk_bytes(a, s.encode(), rng, any_segmentation=backend == "outlines")
        assert state is not None and a.accepting(state), (regex, s)
    for _ in range(10):  # outputs of the automaton are in the language
        out = random_walk(a, rng)
        if out is not None:
            assert re.fullmatch(regex, out.decode()), (regex, out)


# -- Hypothesis: JSON Schemas ----------------------------------------------------------------------

LEAVES = st.one_of(
    st.just({"type": "integer"}),
    st.just({"type": "number"}),
    st.just({"type": "boolean"}),
    st.just({"type": "null"}),
    st.integers(0, 3).map(lambda n: {"type": "string", "maxLength": n + 2}),
    st.lists(st.sampled_from(["x", "y", 1, True, None]), min_size=1, max_size=3, unique=True).map(lambda v: {"enum": v}),
)


def json_schemas():
    def extend(inner):
        return st.one_of(
            st.dictionaries(st.sampled_from(["a", "b", "c"]), inner, min_size=1, max_size=2).flatmap(
                lambda props: st.lists(st.sampled_from(sorted(props)), unique=True).map(
                    lambda req: {"type": "object", "properties": props, "required": req,
                                 "additionalProperties": False})),
            st.tuples(inner, st.integers(0, 2)).map(
                lambda p: {"type": "array", "items": p[0], "maxItems": p[1] + 1}),
            st.tuples(inner, inner).map(lambda p: {"anyOf": [p[0], p[1]]}),
        )
    return st.recursive(LEAVES, extend, max_leaves=4)


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(schema=json_schemas(), seed=st.integers(0, 10**6))
def test_json_schema_outputs_validate(backend, schema, seed):
    a = compile_(backend, json_schema=schema)
    rng = random.Random(seed)
    done = 0
    for _ in range(8):
        out = random_walk(a, rng, max_steps=150, stop=0.6)
        if out is None:
            continue
        done += 1
        jsonschema.validate(json.loads(out.decode()), schema)
    assume(done > 0)


@pytest.mark.parametrize("schema", [
    {"type": "integer", "minimum": 10, "maximum": 12},
    {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
    {"type": "object", "patternProperties": {"^a": {"type": "integer"}}, "additionalProperties": False},
    {"type": "string", "pattern": "^[ab]{2}$"},
])
def test_llguidance_keywords_outlines_ignores_are_honoured(schema):
    """What outlines-core would ignore silently, llguidance enforces: outputs validate."""
    a = compile_("llguidance", json_schema=schema)
    rng = random.Random(0)
    outs = [o for o in (random_walk(a, rng, stop=0.5) for _ in range(30)) if o is not None]
    assert outs
    for o in outs:
        jsonschema.validate(json.loads(o.decode()), schema)
    with pytest.raises(ValueError) if schemas.unsupported_keywords(schema, schemas.OUTLINES_KEYWORDS) \
            else _nothing():
        compile_("outlines", json_schema=schema)


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


# -- sound rewrites that widen llguidance's JSON Schema coverage ----------------------------------

@pytest.mark.parametrize("schema", [
    {"oneOf": [{"type": "string", "maxLength": 3}, {"type": "integer"}, {"type": "null"}]},
    {"oneOf": [{"type": "object", "properties": {"kind": {"const": "a"}, "x": {"type": "integer"}},
                "required": ["kind", "x"], "additionalProperties": False},
               {"type": "object", "properties": {"kind": {"const": "b"}, "y": {"type": "boolean"}},
                "required": ["kind", "y"], "additionalProperties": False}]},
    {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}, "c": {"type": "null"}},
     "required": ["c"], "dependencies": {"a": ["b"], "c": ["b"]}, "additionalProperties": False},
    {"type": "object", "properties": {"a": {"type": "integer"}}, "dependencies": {"a": ["zz"]}},
    {"type": "object", "properties": {"u": {"type": "string", "format": "no-such-format", "maxLength": 4}},
     "required": ["u"], "additionalProperties": False},
])
def test_llguidance_rewrites_keep_outputs_valid(schema):
    assert_walks_validate(schema, seed=1, walks=40)


def assert_walks_validate(schema, seed: int, walks: int, against=None):
    """Random walks through llguidance's automaton for ``schema`` finish and validate under
    ``against`` (default: ``schema``), with the validator its ``$schema`` names."""
    a = compile_("llguidance", json_schema=schema)
    rng = random.Random(seed)
    outs = [o for o in (random_walk(a, rng, stop=0.5) for _ in range(walks)) if o is not None]
    assert len(outs) >= 10
    target = schema if against is None else against
    check = jsonschema.validators.validator_for(target)(target)
    for o in outs:
        check.validate(json.loads(o.decode()))


APPROXIMATED = [
    # not: {required}, and not: {anyOf: [{required}, ...]} / {allOf: [...]} / {properties: {x: {}}, required}
    {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
     "not": {"required": ["a", "b"]}},
    {"properties": {"a": {"type": "integer"}, "b": {"type": "null"}}, "required": ["a"],
     "not": {"anyOf": [{"required": ["a", "b"]}, {"required": ["c"]}]}},
    {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"],
     "not": {"allOf": [{"required": ["a"]}, {"required": ["b"]}]}},
    {"type": "object", "properties": {"x": {"type": "string", "maxLength": 3}},
     "not": {"properties": {"x": {}}, "required": ["x"]}},
    # not: {} is false; not: {type}
    {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"not": {}}}, "additionalProperties": {"not": {}}},
    {"not": {"type": ["object", "array", "string"]}},
    {"type": ["integer", "string"], "maxLength": 2, "not": {"type": "integer"}},
    # uniqueItems, if/then/else, propertyNames
    {"type": "array", "items": {"type": "integer"}, "uniqueItems": True},
    {"type": "array", "items": {"enum": ["a", "b"]}, "uniqueItems": True, "maxItems": 3},
    {"type": "object", "properties": {"kind": {"enum": ["a", "b"]}, "n": {"type": "integer"}}, "required": ["kind"],
     "if": {"properties": {"kind": {"const": "a"}}}, "then": {"required": ["n"]}, "else": {"not": {"required": ["n"]}}},
    {"type": "object", "properties": {"ab": {"type": "integer"}, "b1": {"type": "integer"}, "zz": {"type": "null"}},
     "propertyNames": {"pattern": "^[a-b]+$"}},
    {"type": "object", "properties": {"ab": {"type": "integer"}}, "propertyNames": {"maxLength": 2, "enum": ["ab", "cd"]}},
]


@pytest.mark.parametrize("schema", APPROXIMATED)
def test_llguidance_approximations_keep_outputs_valid(schema):
    assert_walks_validate(schema, seed=2, walks=60)


def test_ref_siblings_are_dropped_only_where_the_draft_ignores_them():
    schema = {"definitions": {"s": {"type": "string", "maxLength": 6}},
              "properties": {"a": {"$ref": "#/definitions/s", "maxLength": 1, "description": "x"}}}
    old = {"$schema": "http://json-schema.org/draft-04/schema#", **schema}
    assert schemas.for_llguidance(old)[0]["properties"]["a"] == {"$ref": "#/definitions/s", "description": "x"}
    new = {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}
    assert schemas.for_llguidance(new)[0]["properties"]["a"]["maxLength"] == 1
    assert schemas.for_llguidance(schema)[0]["properties"]["a"]["maxLength"] == 1  # no $schema: the latest draft
    for s in (old, new):  # either way every output validates under the draft the schema names
        closed = {**s, "type": "object", "required": ["a"], "additionalProperties": False}
        assert_walks_validate(closed, seed=3, walks=40, against=s)


def test_approximations_say_what_they_become():
    rewrite = lambda schema: schemas.for_llguidance(schema)[0]  # noqa: E731
    out = rewrite({"properties": {"a": {}}, "required": ["a"], "not": {"required": ["a", "b"]}})
    assert out["properties"]["b"] is False and out["type"] == "object" and "not" not in out
    assert rewrite({"properties": {"b": {"not": {}}}})["properties"]["b"] is False
    assert rewrite({"not": {"type": "integer"}})["type"] == ["array", "boolean", "null", "object", "string"]
    assert rewrite({"type": "array", "uniqueItems": True})["maxItems"] == 1
    out = rewrite({"if": {"required": ["x"]}, "then": {"required": ["y"]}, "else": {"required": ["z"]}})
    assert out["allOf"] == [{"required": ["x"]}, {"required": ["y"]}] and "if" not in out and "else" not in out
    out = rewrite({"type": "object", "properties": {"ok": {}, "NO": {}}, "propertyNames": {"pattern": "^[a-z]+$"}})
    assert out["properties"]["NO"] is False and out["additionalProperties"] is False


@pytest.mark.parametrize("schema, message", [
    ({"type": "object", "required": ["a"], "not": {"required": ["a"]}}, "cannot hold: the schema itself requires"),
    ({"type": "string", "not": {"type": "string"}}, "leaves no type"),
    ({"type": "object", "required": ["NO"], "propertyNames": {"pattern": "^[a-z]+$"}}, "fails its propertyNames"),
    ({"type": "array", "uniqueItems": True, "minItems": 2}, "uniqueItems"),
    ({"type": "string", "not": {"pattern": "^a"}}, "not"),
])
def test_forms_left_unapproximated_are_refused(schema, message):
    with pytest.raises(ValueError, match=message):
        compile_("llguidance", json_schema=schema)


def test_overlapping_one_of_is_refused():
    with pytest.raises(ValueError, match="oneOf has branches that may overlap"):
        compile_("llguidance", json_schema={"oneOf": [{"type": "integer"}, {"type": "number", "maximum": 5}]})


def test_dependency_rewrite_is_a_subset():
    rewritten, _ = schemas.for_llguidance(
        {"type": "object", "properties": {"a": {}, "b": {}}, "required": ["a"], "dependencies": {"a": ["b"], "b": ["c"]}})
    assert rewritten["required"] == ["a", "b", "c"] and "dependencies" not in rewritten
    rewritten, _ = schemas.for_llguidance({"type": "object", "dependencies": {"a": ["b"]}})
    assert rewritten["properties"]["a"] is False


def test_outlines_refuses_huge_regexes_up_front():
    from decodekit_grammar.backends.outlines import MAX_REGEX_CHARS

    big = "|".join(f"k{i:05d}" for i in range(MAX_REGEX_CHARS // 6 + 10))
    with pytest.raises(ValueError, match="would not fit in memory"):
        compile_("outlines", regex=big)


def test_llguidance_giving_up_on_an_allowed_token_is_a_clear_error():
    """llguidance 1.9 allows ``{`` for this schema, then fails on it ("lexer error: too many
    expressions constructed", a resource limit hit by the bounded repetition). ``step`` must not
    return None there: the plugin reads None as a rejected draft token (state DEAD, all-True
    masks), which for a committed token would leave the rest of the output unconstrained."""
    from decodekit_grammar.backends.llg import EngineLimitError

    words = {"type": "string", "minLength": 1, "maxLength": 5000, "pattern": r"^$|(^(?:\S+\s+){0,99}\S+$)"}
    a = compile_("llguidance", json_schema={"type": "object", "properties": {"q": words, "r": words},
                                            "required": ["q", "r"], "additionalProperties": False})
    s = a.initial()
    for t in [i for i in range(VOCAB.size) if a.allowed(s)[i]]:
        try:  # a later llguidance may cope with the schema: then every allowed token steps
            assert a.step(s, t) is not None, f"allowed token {VOCAB.tokens[t]!r} was rejected"
        except EngineLimitError as e:
            assert str(e).startswith("json_schema: llguidance gave up after the allowed token")
            assert "too complex" in str(e)


def test_one_of_told_apart_by_properties_only_is_refused_when_non_objects_fit():
    """``required`` / ``additionalProperties`` constrain objects only: with no ``type``, a string
    is valid under both branches, so reading this ``oneOf`` as ``anyOf`` would let it through
    (found on JSONSchemaBench: random walks produced ``[" falls threat"]``)."""
    branches = [{"properties": {"first": {"type": "string"}}, "required": ["first"]},
                {"properties": {"car": {"type": "string"}}, "additionalProperties": False}]
    with pytest.raises(ValueError, match="oneOf has branches that may overlap"):
        compile_("llguidance", json_schema={"type": "array", "items": {"oneOf": branches}})
    assert schemas.for_llguidance({"oneOf": branches})[1] is False
    # objects only (the schema holding the oneOf, or one branch): the branches exclude each other
    assert schemas.for_llguidance({"type": "object", "oneOf": branches})[1] is True
    assert schemas.for_llguidance({"oneOf": [dict(branches[0], type="object"), branches[1]]})[1] is True
    schema = {"type": "array", "items": {"type": "object", "oneOf": branches}, "maxItems": 2}
    a = compile_("llguidance", json_schema=schema)
    rng = random.Random(0)
    outs = [o for o in (random_walk(a, rng, stop=0.5) for _ in range(40)) if o is not None]
    assert outs
    for o in outs:
        jsonschema.validate(json.loads(o.decode()), schema)
