"""Closing walks: a short way to finish the output from a grammar state, for ``close_within_budget``.

A model that runs out of new tokens in the middle of a JSON document leaves an output that is
incomplete, however well constrained. With ``close_within_budget: true`` the plugin computes, at
every position, a *closing walk*: a deterministic sequence of allowed tokens that reaches an
accepting state, chosen without the model. While the tokens left (``max_new_tokens`` minus those
generated) exceed the walk's length + 1 (the EOS) + ``CLOSE_MARGIN``, nothing changes; once
they do not, the mask allows only the walk's next token, so the output ends, valid, within the
budget. Following the walk keeps it the walk of every later state (its tail), so a row that
starts to close finishes along it.

The walk (greedy, no search; an upper bound on the shortest completion, not the shortest):

* In an accepting state, it is empty (EOS comes next).
* Where the engine knows tokens that must come next (``Automaton.forced``: llguidance's
  fast-forward tokens, e.g. a JSON key and its ``": "``), it takes the first.
* JSON Schema: inside a string (tracked by :func:`json_quote`) it takes the longest allowed
  token made of ``"`` and then only ``]`` and ``}`` (the string ends, perhaps with its
  containers); outside a string, the longest allowed token made of ``]`` and ``}`` only, else a
  minimal value if one is allowed (``0``, ``""``, ``[]``, ``{}``, ``false``, ``null``; single
  tokens of the vocabulary). Other constraints: the longest allowed token made of ``)`` ``]``
  ``}`` ``"`` ``'`` only.
* Inside a string where a property name may be written, the first token of a name that some
  ``required`` list of the schema holds, if the grammar allows the whole name there: the
  grammar lists optional properties before required ones, and writing those would lengthen
  the walk.
* Otherwise the allowed token with the lowest id: in byte-level BPE vocabularies the single bytes
  come first, so strings and numbers come out short and keys are the first the grammar offers.
  After a single-byte token, it takes the lowest allowed id above that token's (wrapping
  around), so a run of picks cycles through the allowed tokens instead of repeating one
  (``[a-z0-9-]+:`` gives ``-0123456789:``, not ``-`` forever).

It gives up (None) after ``limit`` tokens: a walk longer than the tokens left cannot help, and a
pattern the lowest-id rule loops in (``[a-z0-9-]+`` → ``-----``) is cut there.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from decodekit_grammar.vocab import TokenVocab

MINIMAL_VALUES = [b"0", b'""', b"[]", b"{}", b"false", b"null"]  # JSON, when a value may come

CLOSE_MARGIN = 8  # tokens kept spare: one token the model picks can lengthen the walk by some

OUTSIDE, INSIDE, ESCAPED = 0, 1, 2  # where a JSON text stands after some bytes (see json_quote)


def json_quote(where: int, text: bytes) -> int:
    """Whether JSON ``text`` appended after a position ``where`` ends outside a string, inside
    one, or inside one right after a backslash. (Only ``"`` delimits strings in JSON.)"""
    for c in text:
        if where == ESCAPED:
            where = INSIDE
        elif where == INSIDE and c == 0x5C:  # backslash
            where = ESCAPED
        elif c == 0x22:  # quote
            where = INSIDE if where == OUTSIDE else OUTSIDE
    return where


def required_names(schema: Any) -> list[str]:
    """Every property name listed in a ``required`` array anywhere in a JSON Schema."""
    out: list[str] = []
    if isinstance(schema, dict):
        for key, value in schema.items():
            if key == "required" and isinstance(value, list):
                out += [v for v in value if isinstance(v, str)]
            else:
                out += required_names(value)
    elif isinstance(schema, list):
        for value in schema:
            out += required_names(value)
    return out


def _ranked(tokens: list[bytes | None], keep) -> np.ndarray:
    """int64 ids of the tokens ``keep`` accepts, longest first (then by id)."""
    ids = [i for i, t in enumerate(tokens) if t and keep(t)]
    ids.sort(key=lambda i: (-len(tokens[i]), i))
    return np.array(ids, dtype=np.int64)


_TABLES: dict[tuple[str, bool], list[np.ndarray]] = {}


def closer_tables(vocab: TokenVocab, json: bool) -> list[np.ndarray]:
    """The walk's preferred tokens, best first, per position: JSON ``[OUTSIDE, INSIDE, ESCAPED]``
    (see ``json_quote``), else one list. Built once per vocabulary (~40 ms for 49k tokens: a
    compile must not pay it for every schema)."""
    key = (vocab.key, json)  # the vocabulary's digest ("" for a hand-made one: not cached)
    hit = _TABLES.get(key) if vocab.key else None
    if hit is None:
        tokens = vocab.tokens[: vocab.size]
        if json:
            brackets = _ranked(tokens, lambda t: all(c in b"]}" for c in t))
            spelled = vocab.by_bytes()
            values = np.array([spelled[v][0] for v in MINIMAL_VALUES if v in spelled], dtype=np.int64)
            inside = _ranked(tokens, lambda t: t[:1] == b'"' and all(c in b"]}" for c in t[1:]))
            hit = [np.concatenate([brackets, values]), inside, np.zeros(0, dtype=np.int64)]
        else:
            hit = [_ranked(tokens, lambda t: all(c in b")]}\"'" for c in t))]
        if vocab.key:
            _TABLES[key] = hit
    return hit


class ClosingWalker:
    """Closing walks over one vocabulary, for JSON (``json=True``) or any other constraint."""

    def __init__(self, vocab: TokenVocab, json: bool, required: list[str] = ()):
        tokens = vocab.tokens[: vocab.size]
        self.tokens = tokens
        self.json = json
        # each required property name of the schema + its closing quote, as token ids
        self.required = [ids for ids in (tuple(vocab.encode(name + '"')) for name in sorted(set(required)))
                         if ids and all(t < vocab.size for t in ids)]
        self.closers = closer_tables(vocab, json)

    def _required_key(self, automaton: Any, state: Any, allowed: np.ndarray) -> int | None:
        """The first token of a required property name that may come here with its closing quote."""
        for ids in self.required:
            if allowed[ids[0]] and automaton.accepts(state, ids):
                return ids[0]
        return None

    def _next(self, automaton: Any, state: Any, where: int, previous: int) -> int | None:
        """The walk's next token from ``state``, reached by token ``previous`` (-1: none)."""
        forced = automaton.forced(state)  # no choice there: the engine's own tokens
        if forced:
            return forced[0]
        allowed = automaton.allowed(state)  # bool [vocab size]
        closers = self.closers[where if self.json else 0]
        hit = closers[allowed[closers]]
        if len(hit):
            return int(hit[0])
        if where == INSIDE and self.json and previous >= 0 and (self.tokens[previous] or b"").endswith(b'"'):
            # a string has just opened: where a property name may be written
            key = self._required_key(automaton, state, allowed)
            if key is not None:
                return key
        # the lowest allowed id; above ``previous`` when that is a single byte, so that a pattern
        # like [a-z0-9-]+: runs "-0123456789:" rather than "-" forever
        start = previous + 1 if 0 <= previous < len(allowed) and len(self.tokens[previous] or b"") == 1 else 0
        token = start + int(np.argmax(allowed[start:]))
        if not allowed[token]:
            token = int(np.argmax(allowed))
        return token if allowed[token] else None

    def walk(self, automaton: Any, state: Any, where: int, previous: int, limit: int) -> tuple[int, ...] | None:
        """Token ids from ``state`` to an accepting state, or None if that takes more than
        ``limit`` tokens or the walk reaches a state with no allowed token. ``where``:
        ``json_quote``'s position at ``state`` (JSON); ``previous``: the token that led there
        (-1 if none). Each token depends on these three only, so the walk from any state along
        it is its tail (the plugin relies on that)."""
        out: list[int] = []
        while not automaton.accepting(state):
            if len(out) >= limit:
                return None
            token = self._next(automaton, state, where, previous)
            if token is None:
                return None
            state = automaton.step(state, token)
            if state is None:
                return None
            if self.json:
                where = json_quote(where, self.tokens[token])
            out.append(token)
            previous = token
        return tuple(out)
