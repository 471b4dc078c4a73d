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
from decodekit_grammar import aligned
from decodekit_grammar.constraints import Constraint
from decodekit_grammar.options import GrammarOptions
from decodekit_grammar.vocab import TokenVocab, from_tokenizer

LIVE, DONE, DEAD = 0, 1, 2
_VOCABS: dict[int, tuple[Any, TokenVocab]] = {}


class GState:
    """An immutable per-row state; ``cache`` holds the torch mask once computed."""

    __slots__ = ("inner", "status", "cache")

    def __init__(self, inner: Any, status: int = LIVE):
        self.inner, self.status, self.cache = inner, status, None


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
        backend = "llguidance" if self.options.backend == "auto" else self.options.backend
        cache_root = None
        if self.options.cache:
            from decodekit.models import cache_dir

            cache_root = cache_dir() / "grammar"
        t0 = time.perf_counter()
        self.automaton = self.constraint.compile(self.vocab, backend, cache_root)
        self.compile_time_s = time.perf_counter() - t0
        self.description = self.constraint.description
        self._root = GState(self.automaton.initial())
        self._int_masks: dict[tuple[int, int], torch.Tensor] = {}
        self.trie = aligned.Trie()  # ASAp estimates; kept across calls on purpose (mode: aligned)

    # -- TokenState ------------------------------------------------------------------------------

    def initial_state(self, prompt_ids: list[int]) -> GState:
        return self._root  # the constraint applies to the generated text only

    def next_state(self, state: GState, token: int) -> GState:
        if state.status != LIVE:
            return state
        if token in self.eos_ids:
            return GState(None, DONE) if self.automaton.accepting(state.inner) else GState(None, DEAD)
        inner = self.automaton.step(state.inner, token)
        return GState(inner) if inner is not None else GState(None, DEAD)

    # -- masks -----------------------------------------------------------------------------------

    def allowed(self, state: GState, width: int) -> torch.Tensor:
        """bool ``[width]``: the tokens allowed after ``state`` (EOS included when it may end)."""
        if state.status != LIVE:
            return torch.ones(width, dtype=torch.bool)
        if state.cache is not None and state.cache.shape[0] == width:
            return state.cache
        key = (state.inner, width) if isinstance(state.inner, int) else None
        m = self._int_masks.get(key) if key is not None else None
        if m is None:
            # built in numpy, then shared with torch: a third of the cost of filling a torch row
            row = np.zeros(width, dtype=bool)
            n = min(width, self.vocab.size)
            row[:n] = self.automaton.allowed(state.inner)[:n]
            if self.automaton.accepting(state.inner):
                row[[e for e in self.eos_ids if e < width]] = True
            m = torch.from_numpy(row)
            if key is not None:
                self._int_masks[key] = m
        state.cache = m
        return m

    def _check(self, m: torch.Tensor, positions: Any, i: int, j: int) -> None:
        if bool(m.any()):
            return
        gen = positions.generation
        text = gen.tokenizer.decode(positions.generated(i, j)) if gen.tokenizer is not None else ""
        raise NoAllowedTokenError(
            f"grammar {self.description}: no token of the vocabulary can continue the output "
            f"{text!r} (row {positions.rows[i]})")

    @hookimpl
    def mask(self, positions: Any, logits: torch.Tensor) -> torch.Tensor:
        B, J, V = logits.shape
        states = positions.states(self)
        done = positions.generation.done
        out = torch.ones(B, J, V, dtype=torch.bool)
        for i, row in enumerate(positions.rows):
            if done[row]:
                continue
            for j in range(positions.length(i)):
                m = self.allowed(states[i][j], V)
                self._check(m, positions, i, j)
                out[i, j] = m
        return out.to(logits.device)

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
