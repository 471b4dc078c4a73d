"""The text-so-far as a directed graph, and the repetition length L(v) of a candidate token.

Momentum decoding (Lan et al., 2022) views the text as a walk on a directed graph whose nodes are
token ids and whose edges join consecutive tokens. Emitting a token that is already a node closes
a circuit; the longer the already-walked n-gram that the token would close, the more the walk is
stuck in a loop. For a text ``x_1 .. x_m`` and a candidate ``v`` (definitions as in the authors'
reference implementation, ``find_max_repetition_length``):

* ``L(v) = 0`` when ``v`` is not a node, i.e. ``v`` does not occur in ``x_1 .. x_m``;
* otherwise ``L(v)`` is the largest ``n`` in ``2 .. max_n`` such that the n-gram
  ``x_{m-n+2} .. x_m v`` (the last ``n - 1`` tokens followed by ``v``) occurs somewhere in
  ``x_1 .. x_m``, and ``1`` when there is none. ``max_n`` caps it (5 in the paper).

Occurrences may overlap and may start anywhere, the prompt included when the plugin's
``include_prompt`` option is on (the reference builds its graph from prompt + generated text).

State as a value. :class:`Graph` is the per-row state of the momentum plugin: an immutable value
``(log, length)`` meaning "the first ``length`` tokens of ``log``". A :class:`_Log` is append-only:
it holds tokens and, for every n-gram of length ``1 .. max_n`` in them, the index of the token where
its *first* occurrence ends. Appending never changes what ``log.tokens[:length]`` contains, so every
existing :class:`Graph` keeps its meaning; an n-gram is in a graph exactly when its first end index
is ``< length``. ``Graph.append`` shares the log when it extends the log's end (plain decoding, the
first branch of a draft) or follows a token already there (a draft node being committed), and
copies the first ``length`` tokens into a fresh log only when it diverges from what the log already
holds (a rejected draft, a sibling branch of a tree).
"""

from __future__ import annotations

from dataclasses import dataclass


class _Log:
    """Append-only tokens plus ``first_end``: n-gram (tuple, length 1 .. max_n) → end index."""

    __slots__ = ("max_n", "tokens", "first_end")

    def __init__(self, max_n: int):
        self.max_n = max_n
        self.tokens: list[int] = []
        self.first_end: dict[tuple[int, ...], int] = {}

    def append(self, token: int) -> None:
        m = len(self.tokens)
        self.tokens.append(token)
        toks, first_end = self.tokens, self.first_end
        # the n-grams that end at index m: toks[s : m + 1] for n = m + 1 - s in 1 .. max_n
        for s in range(m, max(-1, m - self.max_n), -1):
            first_end.setdefault(tuple(toks[s:m + 1]), m)

    def prefix_copy(self, length: int) -> _Log:
        """A new log holding the first ``length`` tokens (and only their n-grams)."""
        new = _Log(self.max_n)
        new.tokens = self.tokens[:length]
        new.first_end = {g: e for g, e in self.first_end.items() if e < length}
        return new


@dataclass(frozen=True)
class Graph:
    """The momentum graph of one text: an immutable value; ``append`` returns a new one."""

    log: _Log
    length: int

    @classmethod
    def build(cls, tokens: list[int], max_n: int = 5) -> Graph:
        """The graph of ``tokens`` with n-grams up to ``max_n`` (``max_n >= 1``)."""
        if max_n < 1:
            raise ValueError(f"max_n must be >= 1, got {max_n}")
        log = _Log(max_n)
        for t in tokens:
            log.append(int(t))
        return cls(log, len(log.tokens))

    @property
    def max_n(self) -> int:
        return self.log.max_n

    @property
    def tokens(self) -> tuple[int, ...]:
        return tuple(self.log.tokens[:self.length])

    def __len__(self) -> int:
        return self.length

    def append(self, token: int) -> Graph:
        """The graph after ``token``; ``self`` is unchanged."""
        log, n = self.log, self.length
        if n == len(log.tokens):  # we are the log's end: extend it in place (shared)
            log.append(token)
            return Graph(log, n + 1)
        if log.tokens[n] == token:  # the log already continues with this token
            return Graph(log, n + 1)
        log = log.prefix_copy(n)  # diverging from what the log holds: branch off
        log.append(token)
        return Graph(log, n + 1)

    def contains(self, ngram: tuple[int, ...]) -> bool:
        """Whether ``ngram`` (length 1 .. max_n) occurs in this text."""
        end = self.log.first_end.get(ngram)
        return end is not None and end < self.length

    def repetition_length(self, token: int) -> int:
        """``L(token)``: 0 for a new node, else the longest seen n-gram (≤ max_n) it would close."""
        if not self.contains((token,)):
            return 0
        toks, m = self.log.tokens, self.length
        # longest first: n-gram = the last n - 1 tokens + token; needs n - 1 <= m tokens of context
        for n in range(min(self.max_n, m + 1), 1, -1):
            if self.contains((*toks[m - n + 1:m], token)):
                return n
        return 1
