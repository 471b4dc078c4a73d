"""outlines-core backend: a regex compiled to a token-level automaton, precomputed for all states.

Workarounds for outlines-core 0.2.14 (each has a test in ``tests/test_outlines_pitfalls.py``):

* **Dropped transitions out of match states.** The Index loses every token transition that leaves
  a match (final) state for a non-final one: after ``1`` the pattern ``[0-9]+(\\.[0-9]+)?``
  does not allow ``.``, after ``é`` the pattern ``é+`` does not allow the first byte of another
  ``é``. We compile ``(?:R)S`` instead, where ``S`` is a sentinel character (U+10FFFD) carried
  by one extra token id ``F`` beyond the vocabulary: ``R``'s match states are no longer final, so
  nothing is dropped. A state ``s`` matches ``R`` iff ``F`` leads from ``s`` to a final state;
  states that cannot reach such a state (they are part-way through the sentinel's bytes) are
  dead, and transitions into them are removed.
* **EOS.** The Index's own EOS is a fake id beyond the vocabulary and is never used: the plugin
  allows the pipeline's EOS ids exactly in match states, so ``advance(eos)`` is never called.
* **Masks wider than the index.** ``write_mask_into`` is not used; masks are built at the
  model's logits width, with every id beyond the tokenizer's vocabulary disallowed.

Compiled automata are cached on disk (``<cache_dir>/grammar/outlines/<vocab key>/<regex hash>``).
"""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import numpy as np

from decodekit_grammar.backends.base import Automaton
from decodekit_grammar.vocab import TokenVocab

SENTINEL = "\U0010fffd"
# outlines-core builds the whole token automaton in memory; JSON Schemas expand to regexes of
# hundreds of thousands of characters whose index needs tens of GB. Refuse those up front.
MAX_REGEX_CHARS = 8000
FORMAT_VERSION = 2


class OutlinesAutomaton(Automaton):
    """States are outlines Index state ids (ints); transitions precomputed for every state.

    ``_trans[s] = (ids, nxt)``: int32 arrays, ``ids`` sorted, token ``ids[k]`` leads to ``nxt[k]``
    (compact: a dict of dicts costs ~100 bytes per transition, and a JSON Schema over 49k tokens
    has millions).
    """

    backend = "outlines"

    def __init__(self, regex: str, vocab: TokenVocab, description: str, cache_root: Path | None = None):
        super().__init__(description)
        self.vocab = vocab
        path = None
        if cache_root is not None:
            digest = hashlib.sha256(f"{FORMAT_VERSION}\x00{regex}".encode()).hexdigest()[:24]
            path = cache_root / "outlines" / vocab.key / f"{digest}.pkl"
        table = _load(path)
        if table is None:
            table = _compile(regex, vocab, description)
            _save(path, table)
        self._initial, self._final, self._trans = table
        self._masks: dict[int, np.ndarray] = {}

    def initial(self) -> int:
        return self._initial

    def step(self, state: int, token: int) -> int | None:
        entry = self._trans.get(state)
        if entry is None:
            return None
        ids, nxt = entry
        k = int(np.searchsorted(ids, token))
        return int(nxt[k]) if k < len(ids) and ids[k] == token else None

    def allowed(self, state: int) -> np.ndarray:
        m = self._masks.get(state)
        if m is None:
            m = np.zeros(self.vocab.size, dtype=bool)
            entry = self._trans.get(state)
            if entry is not None:
                m[entry[0]] = True
            self._masks[state] = m
        return m

    def accepting(self, state: int) -> bool:
        return state in self._final

    @property
    def num_states(self) -> int:
        return len(self._trans)


def _compile(regex: str, vocab: TokenVocab, description: str):
    from outlines_core import Index, Vocabulary

    if len(regex) > MAX_REGEX_CHARS:
        raise ValueError(f"{description}: its regex has {len(regex)} characters (more than {MAX_REGEX_CHARS}); "
                         f"the outlines index would not fit in memory: use backend: llguidance")
    n = vocab.size
    table = vocab.by_bytes()
    fake = n  # the sentinel token, then the index's unused EOS, then any missing sentinel bytes
    sentinel = SENTINEL.encode("utf-8")
    table[sentinel] = [fake]
    extra = n + 2
    for k in range(1, len(sentinel)):  # every byte of the sentinel must be spellable
        if sentinel[k:k + 1] not in table:
            table[sentinel[k:k + 1]] = [extra]
            extra += 1
    try:
        index = Index(f"(?:{regex}){SENTINEL}", Vocabulary(n + 1, table))
    except Exception as e:  # outlines raises ValueError / a Rust panic wrapper for bad patterns
        message = str(e).replace(f"(?:{regex}){SENTINEL}", regex)  # hide the sentinel
        raise ValueError(f"{description}: cannot be compiled over this vocabulary: {message}") from None
    raw = index.get_transitions()  # {state: {token: next_state}}
    final = frozenset(s for s, tr in raw.items() if fake in tr and index.is_final_state(tr[fake]))
    live = _coreachable(raw, final, n)
    trans = {}
    for s, tr in raw.items():
        if s in live:
            pairs = sorted((t, s2) for t, s2 in tr.items() if t < n and s2 in live)
            trans[s] = (np.array([t for t, _ in pairs], dtype=np.int32), np.array([s2 for _, s2 in pairs], dtype=np.int32))
    del raw
    initial = index.get_initial_state()
    if initial not in live:
        raise ValueError(f"{description}: matches no string this vocabulary can spell")
    return initial, final, trans


def _coreachable(raw: dict[int, dict[int, int]], final: frozenset[int], n: int) -> set[int]:
    """States from which some match state can be reached through real tokens (ids < n)."""
    back: dict[int, set[int]] = {}
    for s, tr in raw.items():
        for t, s2 in tr.items():
            if t < n:
                back.setdefault(s2, set()).add(s)
    live, stack = set(final), list(final)
    while stack:
        for p in back.get(stack.pop(), ()):
            if p not in live:
                live.add(p)
                stack.append(p)
    return live


def _load(path: Path | None):
    if path is None or not path.exists():
        return None
    try:
        with open(path, "rb") as f:
            return pickle.load(f)
    except Exception:  # a truncated or stale cache file is rebuilt
        return None


def _save(path: Path | None, table) -> None:
    if path is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{id(table)}")
        with open(tmp, "wb") as f:
            pickle.dump(table, f, protocol=pickle.HIGHEST_PROTOCOL)
        tmp.replace(path)
    except OSError:
        pass
