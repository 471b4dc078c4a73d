"""L(v) on hand-built token sequences, against a brute-force scan, and the graph as a value."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from momentum_helpers import brute_repetition_length

from decodekit_momentum import Graph


@pytest.mark.parametrize("text, v, expected", [
    ([], 4, 0),                                   # empty graph: everything is new
    ([1, 2, 3], 4, 0),                            # 4 is not a node
    ([1, 2, 3], 1, 1),                            # node, but the edge 3 → 1 is new
    ([1, 2, 3], 3, 1),                            # node; (3, 3) never seen
    ([5], 5, 1),                                  # a self-loop that was never walked
    ([1, 2, 3, 1, 2], 3, 3),                      # closes 1 2 3 (3-gram); 3 1 2 3 is new
    ([1, 2, 3, 1], 2, 2),                         # closes 1 2
    ([9, 1, 2, 3, 8, 1, 2], 3, 3),                # 8 1 2 3 is new, 1 2 3 is not
    ([7, 7, 7], 7, 3),                            # overlapping: 7 7 7 seen, 7 7 7 7 is not
    ([7, 7, 7, 7, 7, 7], 7, 5),                   # capped at 5
    ([1, 2, 3, 4, 5, 6, 1, 2, 3, 4, 5], 6, 5),   # a 6-gram repeats: capped at 5
    ([1, 2, 3, 4, 1, 2, 3], 4, 4),                # 1 2 3 4
    ([4, 1, 2, 3, 9, 1, 2, 3], 4, 1),             # 3 → 4 never walked
])
def test_repetition_length_by_hand(text, v, expected):
    assert Graph.build(text).repetition_length(v) == expected
    assert brute_repetition_length(text, v) == expected


@pytest.mark.parametrize("max_n, expected", [(1, 1), (2, 2), (3, 3), (7, 6)])
def test_cap(max_n, expected):
    text = [1, 2, 3, 4, 5, 6, 1, 2, 3, 4, 5]  # candidate 6 closes a 6-gram
    assert Graph.build(text, max_n).repetition_length(6) == expected


def test_max_n_must_be_positive():
    with pytest.raises(ValueError, match="max_n"):
        Graph.build([1], 0)


tokens = st.lists(st.integers(0, 3), max_size=40)


@settings(max_examples=300, deadline=None)
@given(text=tokens, max_n=st.integers(1, 6))
def test_matches_brute_force(text, max_n):
    g = Graph.build(text, max_n)
    for v in range(5):
        assert g.repetition_length(v) == brute_repetition_length(text, v, max_n)


@settings(max_examples=200, deadline=None)
@given(ops=st.lists(st.tuples(st.integers(0, 1000), st.integers(0, 3)), max_size=60),
       prompt=st.lists(st.integers(0, 3), max_size=6))
def test_states_are_values_under_forks(ops, prompt):
    """Fork anywhere, in any order (drafts, siblings, rejected branches): every state keeps
    exactly the text it was built from, and its L matches a brute-force scan of that text."""
    states = [(Graph.build(prompt, 4), list(prompt))]
    for pick, tok in ops:
        g, text = states[pick % len(states)]
        states.append((g.append(tok), text + [tok]))
    for g, text in states:
        assert g.tokens == tuple(text)
        for v in range(5):
            assert g.repetition_length(v) == brute_repetition_length(text, v, 4)


def test_plain_appends_share_one_log_and_divergence_copies():
    g = Graph.build([1, 2, 3])
    a = g.append(4)
    assert a.log is g.log                   # extends the log's end: shared
    again = g.append(4)
    assert again.log is g.log               # follows the token already there: shared
    b = g.append(5)
    assert b.log is not g.log               # diverges: a new log with the first 3 tokens
    assert b.tokens == (1, 2, 3, 5) and a.tokens == (1, 2, 3, 4) and g.tokens == (1, 2, 3)
    assert a.repetition_length(5) == 0 and b.repetition_length(5) == 1
