"""Which token sequences reproduce a span of the passage: a small nondeterministic automaton.

The passage is tokenized once with the pipeline's tokenizer, ``S = s_0 .. s_{n-1}``. An answer is
accepted when its tokens are

* a contiguous run ``s_p .. s_{q-1}`` of the passage's own tokens (``0 <= p < q <= n``), or
* an *alternative opening* ``a(i)`` followed by ``s_{i+1} .. s_{q-1}``, where ``a(i)`` is the
  tokenization of ``s_i``'s text with its leading whitespace removed (``" Paris"`` -> ``"Paris"``).
  A generated answer usually starts without a space, while inside the passage that word carries one.

Both kinds decode to a substring of the passage as long as decoding a token sequence concatenates
the tokens' texts (byte-level BPE, character tokenizers). Other tokenizations of the same substring
are not accepted: the rule is sound (every accepted answer is a span) but not complete.

Nodes are ints: ``p`` in ``0..n`` means "the answer so far ends right before passage token
``p``"; ``n + 1 ..`` are the inner nodes of multi-token openings; :data:`START` is the empty
answer. A state is the frozenset of nodes the answer so far can be at (several when a token
occurs more than once in the passage); the empty frozenset is the dead state.
"""

from __future__ import annotations

from functools import lru_cache

START = -1

State = frozenset


class SpanAutomaton:
    """Transitions ``node -> {token: {next nodes}}`` over ``passage_ids`` and its openings.

    ``openings[i]``: the alternative token ids that may start a span at passage token ``i``.
    """

    def __init__(self, passage_ids: list[int], openings: dict[int, list[int]] | None = None):
        if not passage_ids:
            raise ValueError("span: the passage has no tokens")
        self.passage = list(passage_ids)
        n = len(self.passage)
        self.edges: list[dict[int, set[int]]] = [dict() for _ in range(n + 1)]
        for p, t in enumerate(self.passage):
            self.edges[p].setdefault(t, set()).add(p + 1)
        start: dict[int, set[int]] = {t: set(nxt) for t, nxt in _merge(self.edges[:n]).items()}
        self.openings = {i: list(a) for i, a in (openings or {}).items() if a}
        for i, alt in self.openings.items():
            node = None  # walk the opening's tokens through fresh inner nodes, ending at i + 1
            for k, t in enumerate(alt):
                target = i + 1 if k == len(alt) - 1 else len(self.edges)
                if target != i + 1:
                    self.edges.append({})
                table = start if node is None else self.edges[node]
                table.setdefault(t, set()).add(target)
                node = target
        self.start_edges = start

    @property
    def initial(self) -> State:
        return frozenset({START})

    def step(self, state: State, token: int) -> State:
        """The state after ``token``; the dead state when ``token`` continues no span."""
        nxt: set[int] = set()
        for node in state:
            table = self.start_edges if node == START else self.edges[node]
            nxt |= table.get(token, set())
        return frozenset(nxt)

    @lru_cache(maxsize=4096)
    def allowed(self, state: State) -> tuple[tuple[int, ...], bool]:
        """(tokens that continue a span, whether the answer so far is a complete non-empty span).

        A pure function of the state, memoised on the automaton (it never changes after build).
        """
        toks: set[int] = set()
        for node in state:
            toks |= set((self.start_edges if node == START else self.edges[node]).keys())
        complete = bool(state) and START not in state and any(node <= len(self.passage) for node in state)
        return tuple(sorted(toks)), complete

    def sources(self, max_len: int) -> list[tuple[list[int], int]]:
        """``(tokens, min_len)`` per start, for the exact search: every accepted answer of at most
        ``max_len`` tokens is ``tokens[:l]`` for some source and ``min_len <= l <= len(tokens)``
        (``min_len`` is 1 for a passage start, the opening's length for an alternative opening)."""
        n = len(self.passage)
        out = [(self.passage[p:p + max_len], 1) for p in range(n)]
        for i, alt in sorted(self.openings.items()):
            if len(alt) <= max_len:
                out.append(((alt + self.passage[i + 1:])[:max_len], len(alt)))
        return out

    def accepts(self, tokens: list[int]) -> bool:
        """True when ``tokens`` is a non-empty span (used by tests and the benchmark)."""
        state = self.initial
        for t in tokens:
            state = self.step(state, t)
        return self.allowed(state)[1]


def _merge(tables: list[dict[int, set[int]]]) -> dict[int, set[int]]:
    merged: dict[int, set[int]] = {}
    for table in tables:
        for t, nxt in table.items():
            merged.setdefault(t, set()).update(nxt)
    return merged


def build(tokenizer, passage: str) -> SpanAutomaton:
    """The automaton for ``passage`` under ``tokenizer`` (see the module docstring)."""
    ids = tokenizer(passage, add_special_tokens=False)["input_ids"]
    openings: dict[int, list[int]] = {}
    for i, t in enumerate(ids):
        text = tokenizer.decode([t])
        stripped = text.lstrip()
        if stripped == text or not stripped or "\ufffd" in text:
            continue
        alt = tokenizer(stripped, add_special_tokens=False)["input_ids"]
        # keep the opening only if it decodes back to exactly the stripped text (soundness)
        if alt and tokenizer.decode(alt) == stripped:
            openings[i] = alt
    return SpanAutomaton(ids, openings)
