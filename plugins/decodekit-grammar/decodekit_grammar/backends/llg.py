"""llguidance backend: regex, JSON Schema and lark CFGs through one Earley/lexer engine.

llguidance compiles a JSON Schema in milliseconds and computes a 49k-token mask in 1–100 µs by
walking the vocabulary trie with its lexer (no per-state precomputation). Its matcher is
mutable, so a state here is a :class:`MatcherState` that owns a matcher nobody mutates after
creation: ``step`` deep-copies (~2 µs) and consumes one token (~3 µs). The mask of a state is
computed once, as llguidance's packed bitmask (bit ``t % 32`` of word ``t // 32`` = token ``t``),
and cached on it; rows of bools are unpacked from it (~7 µs for 49k tokens).
"""

from __future__ import annotations

import functools
import re
import threading
from typing import Any

import numpy as np

from decodekit.errors import DecodekitError
from decodekit_grammar.backends.base import Automaton
from decodekit_grammar.vocab import TokenVocab

_TOKENIZERS: dict[str, Any] = {}

ENCODE_CACHE = 4096  # forced texts memoised per vocabulary (see _Wrapped)

JSON_OPTIONS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


class _Wrapped:
    """The object llguidance's ``TokenizerWrapper`` reads: tokens as bytes, EOS, specials."""

    def __init__(self, vocab: TokenVocab):
        self.tokens = [t if t is not None else f"<|special {i}|>".encode() for i, t in enumerate(vocab.tokens)]
        self.eos_token_id = vocab.eos_token_id if vocab.eos_token_id is not None else vocab.special_ids[0]
        self.bos_token_id = vocab.bos_token_id
        self.special_token_ids = [i for i, t in enumerate(vocab.tokens) if t is None]
        # llguidance tokenizes the forced text (a JSON key with its quotes and separator, a
        # literal) at every mask where the next bytes are forced, through this Python callback:
        # ~20 µs per call with a Hugging Face tokenizer, most of a JSON Schema's mask time. The
        # forced texts of a grammar repeat, so they are memoised (bounded; the ids are the same,
        # so the masks are bit for bit the same): 1 µs. json_schema: invoice, raw mask p50
        # 26 -> 3 µs, mask+step 57 -> 19 µs (choice: 4 countries 96 -> 49 µs).
        self._encode = functools.lru_cache(maxsize=ENCODE_CACHE)(lambda text: tuple(vocab.encode(text)))

    def __call__(self, text: str) -> list[int]:
        return list(self._encode(text))


# Token "slices": llguidance precomputes the mask of the tokens matching each regex and uses it
# whole where the lexer allows any such token, walking only the rest of the trie. A pure speed
# change (the masks are the same, bit for bit: plugins/decodekit-grammar/tests/test_llg_speed.py).
# llguidance's defaults (whitespace and JSON-string runs) plus lowercase runs, on the 49k vocabulary (pinned core, raw
# llguidance mask p50, 3 runs each): lark sql_select 105 -> 54 µs (mask+step 130 -> 82), regex
# email 87 -> 26 µs (mask+step 99 -> 39); json_schema invoice, phone, name, choice, lark
# json/arithmetic/sygus unchanged within noise; set-up +30-50 ms once per vocabulary (~0.1 ->
# ~0.15 s). Lowercase runs alone slowed lark arithmetic (raw 48 -> 73 µs) and lark json (p99 up
# to 0.5 ms, no JSON-string slices): keep the defaults with them.
LOWERCASE_SLICES = [r"[a-z]{1,2}", r"[a-z]{3,4}", r"[a-z]{5,8}"]


def slices() -> list[str]:
    import llguidance

    return list(llguidance.LLTokenizer.general_slices()) + LOWERCASE_SLICES


def lltokenizer(vocab: TokenVocab) -> Any:
    """An ``LLTokenizer`` for ``vocab`` (built once per vocabulary: ~0.15 s for 49k tokens)."""
    import llguidance

    if vocab.key not in _TOKENIZERS:
        _TOKENIZERS[vocab.key] = llguidance.LLTokenizer(llguidance.TokenizerWrapper(_Wrapped(vocab)),
                                                        slices=slices())
    return _TOKENIZERS[vocab.key]


def format_error(message: str, what: str) -> str:
    """Turn llguidance's ``at 2(4): unknown name`` into ``line 2, column 4: unknown name``."""
    first = message.strip().splitlines()[0] if message.strip() else message
    m = re.match(r"at (\d+)\((\d+)\): (.*)", first)
    if m:
        first = f"line {m.group(1)}, column {m.group(2)}: {m.group(3)}"
    return f"{what}: {first}"


class EngineLimitError(DecodekitError):
    """llguidance failed on a token its own mask allowed (a lexer or parser resource limit)."""

    def __init__(self, description: str, token: bytes, message: str):
        text = (message or "").strip()
        lines = [ln for ln in text.splitlines() if ln.startswith(("Error:", "Stop:"))]
        why = "; ".join(lines) or (text.splitlines() or ["no message"])[0]
        super().__init__(f"{description}: llguidance gave up after the allowed token {token!r} ({why}); "
                         f"the constraint is too complex for its limits, so generation stops here "
                         f"rather than continue unconstrained")


class MatcherState:
    """One llguidance matcher frozen at a prefix, with its packed mask cached once computed."""

    __slots__ = ("matcher", "words", "mask")

    def __init__(self, matcher: Any):
        self.matcher = matcher
        self.words: np.ndarray | None = None  # int32 [ceil(size / 32)]: the allowed tokens, packed
        self.mask: np.ndarray | None = None   # bool [size]: ``words`` unpacked, for ``allowed``


class LLGuidanceAutomaton(Automaton):
    backend = "llguidance"

    def __init__(self, grammar: str, vocab: TokenVocab, description: str):
        import llguidance

        super().__init__(description)
        self.vocab = vocab
        tok = lltokenizer(vocab)
        err = llguidance.LLMatcher.validate_grammar(grammar, tok)
        if err and not err.startswith("WARNING"):
            raise ValueError(format_error(err, description))
        matcher = llguidance.LLMatcher(tok, grammar, log_level=0)
        if matcher.is_error():
            raise ValueError(format_error(matcher.get_error(), description))
        self._root = MatcherState(matcher)
        # ``_keep``: the packed mask of the tokens the grammar may ever allow. Special tokens (EOS
        # included: the plugin's business) never are; llguidance would otherwise let some through
        # (e.g. <unk> when no byte can continue). Bits past the vocabulary are cleared too.
        keep = np.array([t is not None for t in vocab.tokens[: vocab.size]], dtype=bool)
        keep = np.packbits(keep, bitorder="little")
        keep = np.concatenate([keep, np.zeros(-len(keep) % 4, dtype=np.uint8)])
        self._keep = keep.view(np.int32)
        # llguidance writes each mask into ``_scratch`` (its address computed once: reading
        # ``ndarray.ctypes.data`` costs more than some masks); the lock guards it, since
        # llguidance releases the GIL while it computes.
        self._scratch = np.zeros_like(self._keep)
        self._scratch_ptr = self._scratch.ctypes.data
        self._lock = threading.Lock()

    def initial(self) -> MatcherState:
        return self._root

    def step(self, state: MatcherState, token: int) -> MatcherState | None:
        if token >= self.vocab.size or self.vocab.tokens[token] is None:
            return None
        m = state.matcher.deep_copy()
        if not m.consume_token(token) or m.is_error():
            if self.allowed(state)[token]:
                # the mask allowed the token but the matcher failed on it: llguidance hit one of
                # its resource limits (e.g. "lexer error: too many expressions constructed" on
                # a bounded-repetition pattern). Returning None would end the constraint (a
                # rejected draft token) and leave the rest of the output unconstrained.
                raise EngineLimitError(self.description, self.vocab.tokens[token], m.get_error())
            return None
        return MatcherState(m)

    def words(self, state: MatcherState) -> np.ndarray:
        """int32 ``[ceil(size / 32)]``: bit ``t % 32`` of word ``t // 32`` = token ``t`` allowed."""
        if state.words is None:
            with self._lock:
                state.matcher.unsafe_compute_mask_ptr(self._scratch_ptr, self._scratch.nbytes)
                state.words = np.bitwise_and(self._scratch, self._keep)
        return state.words

    def allowed(self, state: MatcherState) -> np.ndarray:
        if state.mask is None:
            state.mask = self.allowed_row(state, self.vocab.size)
        return state.mask

    def allowed_row(self, state: MatcherState, width: int) -> np.ndarray:
        # one pass: ``count`` cuts the bits at ``width`` or pads them with zeros up to it
        return np.unpackbits(self.words(state).view(np.uint8), count=width, bitorder="little").view(bool)

    def forced(self, state: MatcherState) -> list[int]:
        return list(state.matcher.compute_ff_tokens())

    def accepts(self, state: MatcherState, tokens: list[int]) -> bool:
        # validate_tokens checks without consuming (no copy of the matcher)
        return state.matcher.validate_tokens(list(tokens)) == len(tokens)

    def accepting(self, state: MatcherState) -> bool:
        return bool(state.matcher.is_accepting())


def regex_grammar(regex: str) -> str:
    import llguidance

    return llguidance.LLMatcher.grammar_from_regex(regex)


def json_grammar(schema: dict, coerce_one_of: bool = False) -> str:
    import llguidance

    return llguidance.LLMatcher.grammar_from_json_schema(
        schema, defaults=dict(JSON_OPTIONS), overrides={"coerce_one_of": coerce_one_of, "lenient": False})


def lark_grammar(text: str) -> str:
    import llguidance

    return llguidance.LLMatcher.grammar_from_lark(text)
