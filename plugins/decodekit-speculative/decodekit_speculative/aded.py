"""ADED (Liu et al., "Adaptive Draft-Verification for Efficient Large Language Model Decoding"):
drafts from a tri-gram table of the target's own recent next-token distributions. Training-free.

The table
    For a context ``c = (t_-2, t_-1)`` (the two tokens before a position) an entry keeps up to
    ``k`` (``top_k``) candidate next tokens ``x`` with a decayed probability mass ``w_c(x)`` and a
    decayed observation count ``Z_c``. Every target pass scores the root and every draft node of
    each row (rejected ones included); the plugin's ``rescore`` hook reads those logits (and
    returns None: nothing is changed) and, at each scored position, with ``p`` the softmax of the
    logits there and ``gamma = TABLE_DECAY``::

        w_c(x) <- gamma * w_c(x)          for every kept x
        Z_c    <- gamma * Z_c + 1
        w_c(x) <- w_c(x) + p(x)           for the top-k tokens x of p
        keep the k largest w_c            (ties: the smaller token id)

    so ``p_hat(x | c) = w_c(x) / Z_c`` is an exponentially weighted mean of the probability the
    target gave ``x`` in this context, recent passes counting most: the table follows the text as
    it changes (ADED's "evolving" tri-gram representation). The same update goes into a bigram
    entry keyed by ``t_-1`` alone, used whenever the tri-gram context has never been scored.

Drafting: exploitation and exploration (PUCT, as ADED's MCTS-inspired draft maker)
    Each entry also counts, decayed like ``w``, how often each candidate was drafted in that
    context and scored by a target pass: ``n_c(x)``, and ``T_c = sum_x n_c(x)`` (counted in
    ``rescore``, so every row of a batch drafts from the table as it was when the step began). The children of a node in context ``c`` are
    the entry's candidates ordered by::

        score(x | c) = p_hat(x | c) + explore * p_hat(x | c) * sqrt(T_c) / (1 + n_c(x))

    the PUCT rule of AlphaZero-style tree search that ADED adopts: exploit what the target was
    seen to prefer, but give a candidate that has rarely been drafted here (small ``n_c(x)``
    relative to ``T_c``) a bonus proportional to its prior. Exploring pays twice: the candidate
    may be accepted, and, accepted or not, the target pass scores the position *after* it, so
    the table learns the context ``(t_-1, x)`` it would otherwise never see.

    The tree grows best-first by ``priority = prod min(1, score)`` along a node's path (every
    factor is at most 1, so a node never comes before its parent and every prefix of the order is
    a tree), up to ``max_draft_tokens`` nodes. How many of them are kept is pure exploitation: a
    node's ``reach`` is ``prod min(1, lambda * p_hat)`` along its path, ``lambda`` calibrated from
    what verification accepted (:class:`decodekit_speculative.trees.EdgeCalibration`), and the
    prefix maximising ``(1 + sum reach) / cost(N)`` under the measured verify cost is drafted
    (``adaptive: false``: all of it).

Exactness
    Drafts are deterministic (``Draft.q`` is None: one-hot q) and siblings are distinct table
    candidates, which is all the host's verifiers need (greedy: accept while the draft equals
    argmax p'; sampling: recursive rejection sampling with one-hot q, see ``decodekit.verify``).

State
    The table persists across calls of the same pipeline on purpose, like token recycling's
    matrix: what one answer taught about the target's continuations helps the next. It changes
    which drafts are proposed, never what is accepted. The same call gives the same drafts given
    the same table state (every rule here is deterministic, ties broken by token id).
    ``persist_table: false`` starts every call from an empty table; :meth:`AdedTable.reset`
    empties it by hand (``pipe.plugins[0][1].aded.reset()``).
"""

from __future__ import annotations

import heapq
import itertools
import math
from typing import Callable

import torch

from decodekit import reductions
from decodekit.generation import Generation
from decodekit.positions import Positions
from decodekit.types import Draft

from decodekit_speculative.planning import best_prefix
from decodekit_speculative.trees import EdgeCalibration, TreeInfo

TABLE_DECAY = 0.6        # gamma: weight of the older observations of a context
MAX_CONTEXTS = 1 << 18   # tri-gram entries kept (least recently scored dropped first)


class Entry:
    """One context's candidates: decayed mass ``w``, observations ``z``, drafted counts ``n``."""

    __slots__ = ("w", "z", "n")

    def __init__(self) -> None:
        self.w: dict[int, float] = {}
        self.z = 0.0
        self.n: dict[int, float] = {}

    def observe(self, toks: list[int], probs: list[float], k: int, gamma: float) -> None:
        w = self.w
        for x in w:
            w[x] *= gamma
        for x in self.n:
            self.n[x] *= gamma
        self.z = gamma * self.z + 1.0
        for x, p in zip(toks, probs):
            w[x] = w.get(x, 0.0) + p
        if len(w) > k:
            keep = sorted(w.items(), key=lambda kv: (-kv[1], kv[0]))[:k]
            self.w = dict(keep)
            self.n = {x: c for x, c in self.n.items() if x in self.w}

    def p_hat(self, x: int) -> float:
        return self.w.get(x, 0.0) / self.z if self.z > 0 else 0.0

    def ranked(self, explore: float) -> list[tuple[float, int, float]]:
        """``(score, token, p_hat)`` of every candidate, best first (PUCT, ties: smaller id)."""
        total = math.sqrt(sum(self.n.values()))
        out = []
        for x, wx in self.w.items():
            p = wx / self.z
            out.append((p + explore * p * total / (1.0 + self.n.get(x, 0.0)), x, p))
        out.sort(key=lambda s: (-s[0], s[1]))
        return out


class AdedTable:
    """The tri-gram (and fallback bigram) table, the tree builder and the acceptance calibration."""

    def __init__(self, k: int, explore: float, decay: float = TABLE_DECAY, max_contexts: int = MAX_CONTEXTS):
        self.k, self.explore, self.decay, self.max_contexts = k, explore, decay, max_contexts
        self.reset()

    def reset(self) -> None:
        """Forget everything learned: the table, the drafted counts, the calibration."""
        self.tri: dict[tuple[int, int], Entry] = {}
        self.bi: dict[int, Entry] = {}
        self.calibration = EdgeCalibration()

    # -- the table -------------------------------------------------------------------------------

    def entry(self, before: tuple[int, ...]) -> Entry | None:
        """The entry for the position after ``before`` (its last two tokens); bigram fallback."""
        if len(before) >= 2:
            e = self.tri.get((before[-2], before[-1]))
            if e is not None:
                return e
        return self.bi.get(before[-1]) if before else None

    def observe_scores(self, contexts: list[tuple[int, ...]], toks: list[list[int]], probs: list[list[float]],
                       drafted: list[tuple[tuple[int, ...], int] | None] | None = None) -> None:
        """``contexts[i]``: the last (up to) two tokens before scored position ``i``; ``toks[i]`` /
        ``probs[i]``: the target's top-k tokens there and their probabilities. ``drafted[i]``:
        ``(context, token)`` when position ``i`` follows a draft node (that token was tried in
        that context), else None. Positions come parents first, as in a target pass."""
        k, g = self.k, self.decay
        for i, (ctx, t, p) in enumerate(zip(contexts, toks, probs)):
            if drafted is not None and drafted[i] is not None:
                self._tried(*drafted[i])
            if len(ctx) >= 2:
                key = (ctx[-2], ctx[-1])
                e = self.tri.pop(key, None) or Entry()
                self.tri[key] = e  # re-inserted: the dict's order is least recently scored first
                e.observe(t, p, k, g)
            e = self.bi.get(ctx[-1])
            if e is None:
                e = self.bi[ctx[-1]] = Entry()
            e.observe(t, p, k, g)
        if len(self.tri) > self.max_contexts:
            for key in list(itertools.islice(self.tri, len(self.tri) - self.max_contexts * 9 // 10)):
                del self.tri[key]

    def _tried(self, ctx: tuple[int, ...], x: int) -> None:
        """Count that ``x`` was drafted (and scored) after ``ctx``, in both entries that know it."""
        for e in (self.tri.get(ctx[-2:]) if len(ctx) >= 2 else None, self.bi.get(ctx[-1]) if ctx else None):
            if e is not None and x in e.w:
                e.n[x] = e.n.get(x, 0.0) + 1.0

    @torch.inference_mode()
    def rescore(self, positions: Positions, logits: torch.Tensor) -> None:
        """Feed the table from a target pass; ``logits [B', J, V]``. Changes nothing."""
        gen = positions.generation
        contexts, drafted, ii, jj = [], [], [], []
        for i, row in enumerate(positions.rows):
            if gen.done[row]:
                continue
            tail = gen.tokens[row][-2:]
            for j in range(positions.length(i)):
                path = positions.paths[i][j]
                contexts.append(tuple((tail + path)[-2:]))
                drafted.append((tuple((tail + path[:-1])[-2:]), path[-1]) if path else None)
                ii.append(i)
                jj.append(j)
        if not contexts:
            return
        probs = torch.softmax(logits[ii, jj].float(), dim=-1)  # [n, V]
        values, indices = reductions.topk(probs, min(self.k, probs.shape[-1]))  # [n, k]
        self.observe_scores(contexts, indices.tolist(), values.tolist(), drafted)

    # -- drafting --------------------------------------------------------------------------------

    def grow(self, before: tuple[int, ...], max_nodes: int) -> tuple[list[int], list[int], list[float], list[Entry]]:
        """Best-first tree after ``before`` (at least its last two tokens), at most ``max_nodes``.

        Returns per node, in the order added: token, parent, ``p_hat`` and the entry it came from.
        """
        tokens: list[int] = []
        parents: list[int] = []
        p_hats: list[float] = []
        entries: list[Entry] = []
        ranked: dict[int, tuple[Entry, list[tuple[float, int, float]]] | None] = {}

        def candidates(node: int):
            if node not in ranked:
                ctx = before[-2:] if node < 0 else (before[-1:] if parents[node] < 0
                                                    else (tokens[parents[node]],)) + (tokens[node],)
                e = self.entry(tuple(ctx))
                ranked[node] = (e, e.ranked(self.explore)) if e is not None and e.w else None
            return ranked[node]

        heap: list[tuple[float, int, int, int]] = []  # (-priority, tie, parent, rank)
        tie = itertools.count()
        prio = {-1: 1.0}

        def push(parent: int, rank: int) -> None:
            c = candidates(parent)
            if c is not None and rank < len(c[1]):
                heapq.heappush(heap, (-prio[parent] * min(1.0, c[1][rank][0]), next(tie), parent, rank))

        push(-1, 0)
        while heap and len(tokens) < max_nodes:
            neg, _, parent, rank = heapq.heappop(heap)
            e, cands = candidates(parent)
            _, x, p = cands[rank]
            tokens.append(x)
            parents.append(parent)
            p_hats.append(p)
            entries.append(e)
            me = len(tokens) - 1
            prio[me] = -neg
            push(parent, rank + 1)
            push(me, 0)
        return tokens, parents, p_hats, entries

    def reach(self, parents: list[int], p_hats: list[float]) -> list[float]:
        """Calibrated chance that verification gets to each node (exploitation only)."""
        out: list[float] = []
        for par, p in zip(parents, p_hats):
            out.append((1.0 if par < 0 else out[par]) * self.calibration.accept(p))
        return out

    def propose(self, gen: Generation, active: list[int], cost: Callable[[int], float], max_nodes: int,
                adaptive: bool) -> tuple[list[Draft | None], list[TreeInfo | None]]:
        """One draft per row (None where nothing is known or drafting does not pay)."""
        drafts: list[Draft | None] = [None] * gen.num_rows
        infos: list[TreeInfo | None] = [None] * gen.num_rows
        for b in active:
            tokens, parents, p_hats, entries = self.grow(tuple(gen.tokens[b][-2:]), max_nodes)
            n = best_prefix(self.reach(parents, p_hats), cost) if adaptive else len(tokens)
            if n == 0:
                continue
            drafts[b] = Draft(tokens[:n], parents[:n])
            infos[b] = TreeInfo(self, p_hats[:n])
        return drafts, infos

    def observe(self, draft: Draft, info: TreeInfo, accepted: list[int]) -> None:
        self.calibration.observe(draft, info.f, accepted)

    def step(self) -> None:
        self.calibration.step()
