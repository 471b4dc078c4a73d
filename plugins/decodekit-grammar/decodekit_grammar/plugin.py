"""The ``grammar`` plugin: a token mask from one constraint, evaluated along drafts; ASAp optional.

Per-row state is a :class:`GState` value (the host forks it along drafts and commits it):

* ``LIVE`` with the backend's automaton state;
* ``DONE`` after an EOS token that the constraint allowed (nothing more is generated);
* ``DEAD`` after a token the constraint rejects. Only a draft can lead there, and such a draft
  node is never accepted (its probability under p' is 0), so its positions are unreachable and
  get an all-True mask (the host needs *some* allowed token everywhere).

Masks are ``[B', J, V]`` at the logits' width ``V``: token ids beyond the tokenizer's vocabulary
are never allowed, and the pipeline's EOS ids are allowed exactly when the constraint may end.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import torch

from decodekit import NoAllowedTokenError, TokenState, hookimpl
from decodekit_grammar import aligned, closing
from decodekit_grammar.constraints import Constraint
from decodekit_grammar.options import GrammarOptions
from decodekit_grammar.vocab import TokenVocab, from_tokenizer

LIVE, DONE, DEAD = 0, 1, 2
_VOCABS: dict[int, tuple[Any, TokenVocab]] = {}


class GState:
    """An immutable per-row state; ``cache`` holds its mask row once computed (see ``Grammar.row``).

    With ``close_within_budget``: ``where`` is :func:`closing.json_quote`'s position after the
    text so far (JSON Schema), ``previous`` the last token (-1 at the start), and ``closing``
    caches the state's closing walk as ``(walk, limit)`` (the walk, or None if none fits in
    ``limit`` tokens).
    """

    __slots__ = ("inner", "status", "cache", "where", "previous", "closing")

    def __init__(self, inner: Any, status: int = LIVE, where: int = closing.OUTSIDE, previous: int = -1):
        self.inner, self.status, self.cache = inner, status, None
        self.where, self.previous, self.closing = where, previous, None


def vocab_of(tokenizer: Any) -> TokenVocab:
    """The byte vocabulary of ``tokenizer``, built once per tokenizer object."""
    hit = _VOCABS.get(id(tokenizer))
    if hit is None or hit[0] is not tokenizer:
        hit = (tokenizer, from_tokenizer(tokenizer))
        _VOCABS[id(tokenizer)] = hit
    return hit[1]


class Grammar(TokenState[GState]):
    """Constrain the output to a regex, a choice, a JSON Schema or a lark CFG.

    Example (a tiny random model; every output matches)::

        >>> from decodekit import Pipeline
        >>> from decodekit.testing import tiny_model, tiny_tokenizer
        >>> tok = tiny_tokenizer(); model = tiny_model("llama", tok)
        >>> pipe = Pipeline(model, tokenizer=tok, decoding={"max_new_tokens": 8},
        ...                 plugins=[{"name": "grammar", "regex": "[ab]{3}"}])
        >>> pipe.generate("x", raw=True).text in {a + b + c for a in "ab" for b in "ab" for c in "ab"}
        True
    """

    def __init__(self, options: GrammarOptions | None = None, pipeline: Any = None, **kwargs: Any):
        self.options = options or GrammarOptions(**kwargs)
        self.constraint = Constraint.from_options(self.options)
        self.vocab = vocab_of(pipeline.tokenizer)
        self.eos_ids = sorted(pipeline.eos_token_ids())
        if not self.eos_ids:
            raise ValueError("the tokenizer has no EOS token: a grammar needs one to end the output")
        cache_root = None
        if self.options.cache:
            from decodekit.models import cache_dir

            cache_root = cache_dir() / "grammar"
        t0 = time.perf_counter()
        self.automaton = self.constraint.compile(self.vocab, self.options.backend, cache_root)
        self.compile_time_s = time.perf_counter() - t0
        self.description = self.constraint.description
        self._root = GState(self.automaton.initial())
        self._eos = frozenset(self.eos_ids)
        self._int_masks: dict[tuple[int, int], tuple[np.ndarray, bool]] = {}
        self.trie = aligned.Trie()  # ASAp estimates; kept across calls on purpose (mode: aligned)
        self.walker = None
        if self.options.close_within_budget:
            is_json = self.constraint.kind == "json_schema"
            required = closing.required_names(self.constraint.source) if is_json else []
            self.walker = closing.ClosingWalker(self.vocab, json=is_json, required=required)

    # -- TokenState ------------------------------------------------------------------------------

    def initial_state(self, prompt_ids: list[int]) -> GState:
        return self._root  # the constraint applies to the generated text only

    def next_state(self, state: GState, token: int) -> GState:
        if state.status != LIVE:
            return state
        if token in self._eos:
            return GState(None, DONE) if self.automaton.accepting(state.inner) else GState(None, DEAD)
        inner = self.automaton.step(state.inner, token)
        if inner is None:
            return GState(None, DEAD)
        if self.walker is None:
            return GState(inner)
        where = closing.json_quote(state.where, self.vocab.tokens[token]) if self.walker.json else state.where
        nxt = GState(inner, where=where, previous=token)
        walk = state.closing[0] if state.closing is not None else None
        if walk and walk[0] == token:  # the same walk goes on from here: its tail is this state's
            nxt.closing = (walk[1:], state.closing[1])
        return nxt

    # -- masks -----------------------------------------------------------------------------------

    def row(self, state: GState, width: int) -> tuple[np.ndarray, bool]:
        """numpy bool ``[width]``, the tokens allowed after a LIVE ``state`` (EOS included when it
        may end), and whether any is. Cached on the state (and per automaton state when states
        are ints): never modify the row."""
        hit = state.cache
        if hit is not None and hit[0].shape[0] == width:
            return hit
        key = (state.inner, width) if isinstance(state.inner, int) else None
        hit = self._int_masks.get(key) if key is not None else None
        if hit is None:
            hit = self._new_row(state, width)
            if key is not None:
                self._int_masks[key] = hit
        state.cache = hit
        return hit

    def _new_row(self, state: GState, width: int) -> tuple[np.ndarray, bool]:
        """Like ``row``, but a new array, not cached."""
        row = self.automaton.allowed_row(state.inner, width)
        if self.automaton.accepting(state.inner):
            row[[e for e in self.eos_ids if e < width]] = True
        return row, bool(row.any())

    def closing_walk(self, state: GState, limit: int) -> tuple[int, ...] | None:
        """The closing walk of a LIVE ``state`` (see :mod:`closing`), or None if it is longer
        than ``limit`` tokens. Cached on the state."""
        hit = state.closing
        if hit is not None and (hit[0] is not None or limit <= hit[1]):
            walk = hit[0]
        else:
            walk = self.walker.walk(self.automaton, state.inner, state.where, state.previous, limit)
            state.closing = (walk, limit)
        return walk if walk is not None and len(walk) <= limit else None

    def row_at(self, state: GState, generated: int, max_new_tokens: int, width: int) -> tuple[np.ndarray, bool]:
        """The mask row of a LIVE ``state`` at a position after ``generated`` new tokens of
        ``max_new_tokens``: ``row``, or with ``close_within_budget`` only the closing walk's next
        token (EOS once it is accepting) when the tokens left are no more than the walk + EOS +
        ``closing.CLOSE_MARGIN``."""
        row, some = self.row(state, width)
        if self.walker is None or not some:
            return row, some
        left = max_new_tokens - generated  # tokens that may still come, this one included
        walk = self.closing_walk(state, left - 1)  # it must leave room for the EOS
        if walk is None or len(walk) + 1 + closing.CLOSE_MARGIN < left:
            return row, some
        forced = np.zeros(width, dtype=bool)
        forced[[walk[0]] if walk else [e for e in self.eos_ids if e < width]] = True
        return forced, True

    def allowed(self, state: GState, width: int) -> torch.Tensor:
        """bool ``[width]``: the tokens allowed after ``state`` (EOS included when it may end)."""
        if state.status != LIVE:
            return torch.ones(width, dtype=torch.bool)
        return torch.from_numpy(self.row(state, width)[0])  # shares the cached row: read it only

    def _check(self, m: Any, positions: Any, i: int, j: int) -> None:
        if bool(m.any()):
            return
        self._no_token(positions, i, j)

    def _no_token(self, positions: Any, i: int, j: int) -> None:
        gen = positions.generation
        text = gen.tokenizer.decode(positions.generated(i, j)) if gen.tokenizer is not None else ""
        raise NoAllowedTokenError(
            f"grammar {self.description}: no token of the vocabulary can continue the output "
            f"{text!r} (row {positions.rows[i]})")

    @hookimpl
    def mask(self, positions: Any, logits: torch.Tensor) -> torch.Tensor:
        # built in numpy (an operation there costs a fraction of torch's dispatch on a 49k row)
        # and handed to torch once; the result never shares memory with the cached rows
        B, J, V = logits.shape
        states = positions.states(self)
        done = positions.generation.done
        if self.walker is None and B == 1 and J == 1 and not done[positions.rows[0]]:
            st = states[0][0]
            if st.status == LIVE and st.cache is None and not isinstance(st.inner, int):
                # one position in a state seen for the first time (plain decoding): its new row
                # becomes the mask as it is, neither copied nor cached (the backend keeps its
                # packed mask, should the state come back)
                row, some = self._new_row(st, V)
                if not some:
                    self._no_token(positions, 0, 0)
                m = torch.from_numpy(row.reshape(1, 1, V))
                return m if logits.is_cpu else m.to(logits.device)
        max_new = positions.generation.limits.max_new_tokens if self.walker is not None else 0
        out = np.empty((B, J, V), dtype=bool)
        for i, r in enumerate(positions.rows):
            n = 0 if done[r] else positions.length(i)
            for j in range(n):
                st = states[i][j]
                if st.status == LIVE:
                    if self.walker is None:
                        row, some = self.row(st, V)
                    else:
                        row, some = self.row_at(st, len(positions.generated(i, j)), max_new, V)
                    if not some:
                        self._no_token(positions, i, j)
                    out[i, j] = row
                else:
                    out[i, j] = True
            if n < J:
                out[i, n:] = True  # a finished row, or padding: unrestricted
        m = torch.from_numpy(out)
        return m if logits.is_cpu else m.to(logits.device)

    # -- ASAp (mode: aligned) --------------------------------------------------------------------

    @hookimpl
    def rescore(self, positions: Any, logits: torch.Tensor) -> torch.Tensor | None:
        """Add ``log c(w·t)`` of every expanded child: sampling then follows ``P(t|w) c(w·t)``.

        Also stashes, per evaluated prefix ``w``, the raw log-probabilities ``log P(·|w)``
        (``[V]``) and the allowed mass ``A(w)`` for ``advance`` to grow the trie.
        """
        if self.options.mode != "aligned" or positions.is_draft:
            return None
        gen = positions.generation
        stash = gen.scratch(self).setdefault("stash", {})
        states = positions.states(self)
        logp = torch.log_softmax(logits.float(), dim=-1)  # [B', J, V] raw model log P(t | w)
        out = logits.clone()
        for i, row in enumerate(positions.rows):
            if gen.done[row]:
                continue
            prompt = tuple(gen.tokens[row][: gen.prompt_lengths[row]])
            for j in range(positions.length(i)):
                st = states[i][j]
                if st.status != LIVE:
                    continue
                generated = positions.generated(i, j)
                allowed = self.allowed(st, logits.shape[-1]).to(logp.device)
                mass = float(torch.logsumexp(logp[i, j].masked_fill(~allowed, -math.inf), dim=-1).exp())
                stash[(row, tuple(generated))] = (logp[i, j].detach().cpu(), mass)
                ids, vals = aligned.log_c(self.trie.find(prompt, generated), logits.shape[-1])
                if ids:
                    out[i, j, ids] += torch.tensor(vals, dtype=out.dtype, device=out.device)
        return out

    @hookimpl
    def advance(self, generation: Any, decision: Any) -> None:
        """Grow the ASAp trie along each row's newly committed tokens and update ``c`` to the root."""
        if self.options.mode != "aligned":
            return
        scratch = generation.scratch(self)
        stash = scratch.pop("stash", {})
        seen = scratch.setdefault("seen", {})
        for row in range(generation.num_rows):
            new = generation.new_tokens(row)
            start = seen.get(row, 0)
            if len(new) == start:
                continue
            seen[row] = len(new)
            prompt = tuple(generation.tokens[row][: generation.prompt_lengths[row]])
            node = self.trie.root(prompt)
            for t in new[:start]:
                node = node.children.get(t) or node.children.setdefault(t, aligned.Node(node, float("nan")))
            for k in range(start, len(new)):
                entry = stash.get((row, tuple(new[:k])))
                if entry is None:  # not evaluated in aligned mode (a DONE/DEAD state): stop growing
                    break
                logp_w, mass = entry
                if node.allowed_mass is None:
                    node.allowed_mass = mass
                t = new[k]
                child = node.children.get(t)
                if child is None:
                    child = aligned.Node(node, float(logp_w[t].exp()), terminal=t in self.eos_ids)
                    node.children[t] = child
                node = child
            aligned.propagate(node)
