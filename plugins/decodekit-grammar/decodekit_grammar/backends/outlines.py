"""outlines-core backend: a regex compiled to a token-level automaton, precomputed for all states.

Workarounds for outlines-core 0.2.14 (each has a test in ``tests/test_backends.py``):

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
import re
from pathlib import Path

import numpy as np

from decodekit_grammar.backends.base import Automaton
from decodekit_grammar.vocab import TokenVocab

SENTINEL = "\U0010fffd"
# outlines-core builds the whole token automaton in memory; JSON Schemas expand to regexes of
# hundreds of thousands of characters whose index needs tens of GB. Refuse those up front.
MAX_REGEX_CHARS = 8000
FORMAT_VERSION = 2
# a state allowing more tokens than this keeps its mask packed (1 bit per token): unpacking a
# 49k row (~8 µs) beats scattering thousands of ids into one (~3 ns an id)
DENSE = 2048

# ``backend: auto`` gives a regex to outlines-core when its precomputed masks pay off (its states
# allow many tokens on average: llguidance walks all of them at every mask) and its index stays
# small (built in about a second on one core, a few MB cached). See ``auto_prefers``.
AUTO_MIN_DENSITY = 2000          # estimated tokens allowed per state, on average
AUTO_MAX_TRANSITIONS = 2_000_000  # estimated token transitions of the index
AUTO_MAX_STATES = 1000           # states of the byte-level automaton
AUTO_MAX_REPEAT = 256            # bound on the counted repetitions, see ``_repeat_size``
AUTO_WIDE_FACTOR = 16            # ... times this when a class spans Unicode (., \w, \d, \p{..}, [^..])
_FIRST_BYTES: dict[str, np.ndarray] = {}


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
        self._packed = {s: _packed(ids, vocab.size) for s, (ids, _) in self._trans.items() if len(ids) > DENSE}
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
            m = self._masks[state] = self.allowed_row(state, self.vocab.size)
        return m

    def allowed_row(self, state: int, width: int) -> np.ndarray:
        packed = self._packed.get(state)
        if packed is not None:  # ``count`` cuts the bits at ``width`` or pads them with zeros
            return np.unpackbits(packed, count=width, bitorder="little").view(bool)
        row = np.zeros(width, dtype=bool)
        entry = self._trans.get(state)
        if entry is not None:
            ids = entry[0]  # sorted
            row[ids[: np.searchsorted(ids, width)]] = True
        return row

    def accepting(self, state: int) -> bool:
        return state in self._final

    @property
    def num_states(self) -> int:
        return len(self._trans)


def auto_prefers(regex: str, vocab: TokenVocab) -> bool:
    """True when ``backend: auto`` should compile ``regex`` with outlines-core.

    Estimated without building the token index: outlines-core's automaton over single bytes
    (milliseconds) gives the states; a state's token count is estimated as the number of
    vocabulary tokens whose first byte it allows. Refused (False) before that when the counted
    repetitions could make even the byte automaton huge (``.{0,5000}``), and when outlines-core
    cannot compile the pattern at all (anchors, bad syntax: llguidance reports those).
    """
    from outlines_core import Index, Vocabulary

    if len(regex) > MAX_REGEX_CHARS or _repeat_size(regex) > AUTO_MAX_REPEAT:
        return False
    try:
        index = Index(f"(?:{regex})", Vocabulary(256, {bytes([b]): [b] for b in range(256)}))
    except Exception:  # outlines raises ValueError / a Rust panic wrapper for patterns it refuses
        return False
    trans = index.get_transitions()
    if not trans or len(trans) > AUTO_MAX_STATES:
        return False
    first = _first_bytes(vocab)
    estimate = sum(int(first[[b for b in tr if b < 256]].sum()) for tr in trans.values())
    return estimate <= AUTO_MAX_TRANSITIONS and estimate >= AUTO_MIN_DENSITY * len(trans)


def _repeat_size(regex: str) -> int:
    """A cheap bound on how counted repetitions multiply the byte automaton's states: the product
    of their sizes (``{m,n}``: n + 1, ``{m}`` and ``{m,}``: m + 1), times ``AUTO_WIDE_FACTOR`` when
    some class spans Unicode (each repetition of ``\\w`` is hundreds of byte states: the byte
    automaton of ``\\w{0,100}`` alone takes outlines-core a second)."""
    size = 1
    for low, high in re.findall(r"\{(\d+)(?:,(\d*))?\}", regex):  # {m}, {m,}, {m,n}
        size *= int(high or low) + 1
    wide = any(m.group() in (".", "[^") or m.group()[1] in "wWdDsSpP"
               for m in re.finditer(r"\\.|\[\^|\.", regex))
    return size * AUTO_WIDE_FACTOR if wide and size > 1 else size


def _first_bytes(vocab: TokenVocab) -> np.ndarray:
    """int64 ``[256]``: how many tokens of ``vocab`` start with each byte."""
    hit = _FIRST_BYTES.get(vocab.key)
    if hit is None:
        hit = np.bincount([t[0] for t in vocab.tokens if t], minlength=256).astype(np.int64)
        _FIRST_BYTES[vocab.key] = hit
    return hit


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
    raw = index.get_transitions()  # {state: {token: next_state}}: up to millions of entries
    final = frozenset(s for s, tr in raw.items() if fake in tr and index.is_final_state(tr[fake]))
    real: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # per state: (ids, next states), ids < n
    while raw:  # numpy per state, not a Python loop per transition (seconds on dense regexes)
        s, tr = raw.popitem()
        ids = np.fromiter(tr.keys(), dtype=np.int64, count=len(tr))
        nxt = np.fromiter(tr.values(), dtype=np.int64, count=len(tr))
        keep = ids < n
        real[s] = (ids[keep], nxt[keep])
    live = _coreachable({s: np.unique(nxt).tolist() for s, (_, nxt) in real.items()}, final)
    live_ids = np.fromiter(live, dtype=np.int64, count=len(live))
    trans = {}
    for s, (ids, nxt) in real.items():
        if s in live:
            keep = np.isin(nxt, live_ids)
            ids, nxt = ids[keep], nxt[keep]
            order = np.argsort(ids)
            trans[s] = (ids[order].astype(np.int32), nxt[order].astype(np.int32))
    del real
    initial = index.get_initial_state()
    if initial not in live:
        raise ValueError(f"{description}: matches no string this vocabulary can spell")
    return initial, final, trans


def _packed(ids: np.ndarray, n: int) -> np.ndarray:
    """uint8 ``[ceil(n / 8)]``: bit ``t % 8`` of byte ``t // 8`` set for each token id in ``ids``."""
    row = np.zeros(n, dtype=bool)
    row[ids] = True
    return np.packbits(row, bitorder="little")


def _coreachable(successors: dict[int, list[int]], final: frozenset[int]) -> set[int]:
    """States from which some match state can be reached (``successors``: through real tokens)."""
    back: dict[int, set[int]] = {}
    for s, nxt in successors.items():
        for s2 in nxt:
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
