"""The automaton accepts exactly the spans (character tokenizer) and only spans (BPE openings)."""

from decodekit_span.automaton import START, SpanAutomaton, build



def accepted(a: SpanAutomaton, max_len: int) -> set[tuple[int, ...]]:
    """Every accepted token sequence up to ``max_len``, by depth-first walk of the automaton."""
    out, stack = set(), [((), a.initial)]
    while stack:
        seq, state = stack.pop()
        toks, complete = a.allowed(state)
        if complete:
            out.add(seq)
        if len(seq) < max_len:
            stack.extend((seq + (t,), a.step(state, t)) for t in toks)
    return out


def test_char_tokenizer_accepts_exactly_the_substrings(tok, passage):
    PASSAGE = passage
    a = build(tok, PASSAGE)
    got = {tok.decode(list(s)) for s in accepted(a, 5)}
    want = {PASSAGE[i:j] for i in range(len(PASSAGE)) for j in range(i + 1, min(i + 5, len(PASSAGE)) + 1)}
    assert got == want


def test_states_track_every_occurrence():
    a = SpanAutomaton([5, 6, 5, 7])  # token 5 occurs twice
    s = a.step(a.initial, 5)
    assert s == frozenset({1, 3})
    assert a.allowed(s) == ((6, 7), True)
    assert a.step(s, 7) == frozenset({4})
    assert a.allowed(frozenset({4})) == ((), True)  # end of passage: only EOS
    assert a.step(s, 9) == frozenset()  # dead
    assert a.allowed(a.initial) == ((5, 6, 7), False)  # the empty answer cannot end
    assert START in a.initial


def test_openings_strip_leading_space_and_stay_sound(smol, embedded_passage):
    EMBEDDED_PASSAGE = embedded_passage
    t = smol.tokenizer
    a = build(t, EMBEDDED_PASSAGE)
    paris = t("Paris", add_special_tokens=False)["input_ids"]
    assert a.accepts(paris) and a.accepts(paris + t(".", add_special_tokens=False)["input_ids"])
    assert a.accepts(t("Eiffel Tower", add_special_tokens=False)["input_ids"])
    assert not a.accepts(t("Paris Tower", add_special_tokens=False)["input_ids"])
    for seq in accepted(a, 3):  # every accepted answer decodes to a substring
        assert t.decode(list(seq)) in EMBEDDED_PASSAGE


def test_sources_cover_every_span(tok):
    a = build(tok, "abcab")
    spans = set()
    for toks, lo in a.sources(3):
        spans |= {tuple(toks[:l]) for l in range(lo, len(toks) + 1)}
    assert spans == accepted(a, 3)
