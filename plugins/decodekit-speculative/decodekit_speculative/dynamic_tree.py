"""Dynamic token trees (DySpec, Xiong et al., "DySpec: Faster Speculative Decoding with Dynamic
Token Tree Structure") for the model drafters (``draft_model``, ``layer_skip``; ``tree: dynamic``).

Instead of a chain (or a fixed tree shape), the draft tree grows greedily by the drafter's own
processed distribution ``q'``: the candidate with the largest estimated path probability is
added next, where a node's path probability is the product along its path of
``a = min(1, lambda * q'(x | parent))`` (``lambda`` calibrated from what verification accepted,
:class:`decodekit_speculative.trees.EdgeCalibration`; 1 means the raw product of ``q'``).

Growth, one row
    A max-heap holds *slots*: "the next child of node n". A slot's value is computed before its
    token is drawn: ``reach(n) * a(f)`` with ``f`` the expected ``q'`` of the child to come —
    greedy: the largest ``q'_n`` among tokens not yet children of ``n`` (the child will be that
    token); sampling: ``E_{x ~ q_j}[q'_n(x)]`` for ``q_j`` = ``q'_n`` without the earlier children,
    renormalised (the child will be drawn from ``q_j``). Popping a slot creates the child (the
    argmax, or a draw from ``q_j`` with the row's generator), pushes the parent's next slot and
    a placeholder for the child's own first child, valued with a running estimate of the first-
    child factor because ``q'`` at the child needs a drafter forward. When a placeholder is on top,
    the row waits: one drafter forward over the whole tree so far (tree attention, batched over
    the waiting rows) gives ``q'`` at every new node, and their real slots replace the
    placeholders. So a tree of N nodes costs about ``depth`` drafter forwards, not N.

Budget
    At every size on the planner's grid the row decides whether to go on: expected accepted
    tokens ``1 + sum`` of the created nodes' slot values, plus a prediction for ``M - i`` more
    nodes (the best values among the heap's slots, each followed by a chain shrinking by the
    first-child factor), over the cost ``cost(1 + M)`` of a verify pass (``CostModel``: measured,
    or ``verify_costs``) plus the drafter forwards; it stops when no larger ``M`` beats the
    current size. ``adaptive: false``: always ``max_draft_tokens`` nodes. ``draft_threshold`` is
    not used (the budget rule replaces it).

Why sampling stays exact
    The host's tree verifier (``decodekit.verify.sample_verdict``) is recursive rejection
    sampling: at a node it tries the children in index order; child ``c`` (token ``x``, its draft
    distribution ``Draft.q[c]``) is accepted with ``min(1, p(x) / q_c(x))``, else
    ``p <- norm(max(0, p - q_c))`` and the next child is tried; with every child rejected the
    token is drawn from what is left of ``p``. Each try is a classic speculative step for the
    current ``p`` with proposal ``q_c``, so it emits a token distributed as that ``p`` *provided
    the child's token is a fresh draw from ``q_c`` given everything that decided the tree's shape
    and the earlier siblings* (then ``min(p, q_c) + (1 - sum min(p, q_c)) * norm(max(0, p - q_c))
    = p`` at every sibling and, by induction, at every depth). This module meets that contract:

    * siblings are drawn *without replacement*: child ``j`` of ``n`` is drawn from ``q_j`` =
      ``q'_n`` with children ``1..j-1`` removed, renormalised, and ``Draft.q[c] = q_j`` — the
      exact conditional distribution of that draw given its earlier siblings (the residual
      update then uses the right ``q``; distinct siblings also waste no verify slots);
    * a node is created *before* its token is drawn, from quantities known at that moment (the
      tokens and ``q'`` of nodes created earlier, the persistent estimates), and never removed:
      its existence never depends on its own token or on a later draw. Index order is creation
      order, so earlier siblings are earlier nodes (``parents[i] < i`` holds as well);
    * ``q'`` is the *processed* draft distribution (``generation.process_draft``: the pipeline's
      rescorers, masks and warpers along the node's path), as everywhere in this plugin.

    Greedy needs none of this: greedy verification is exact for any draft; nodes are the argmax
    tokens (distinct), with ``Draft.q`` None.
"""

from __future__ import annotations

import heapq
import itertools
import time
from typing import Callable

import torch

from decodekit.generation import Generation
from decodekit.types import Draft

from decodekit_speculative.drafter import DrafterState, ModelDrafter
from decodekit_speculative.planning import CostModel, RankStats, plan_chain, sizes_up_to
from decodekit_speculative.trees import EdgeCalibration, TreeInfo

PRIOR_DEPTH_RATE = 0.6   # prior chance that the accepted path goes one node deeper (gates drafting)
SLOT, PLACEHOLDER = 0, 1


class _Row:
    """One row's tree while it grows. Node ``-1`` is the root (the row's committed text)."""

    def __init__(self, b: int, q_root: torch.Tensor):
        self.b = b
        self.tokens: list[int] = []
        self.parents: list[int] = []
        self.f: list[float] = []          # q'_parent(x): each node's edge probability
        self.reach: dict[int, float] = {-1: 1.0}
        self.q: dict[int, torch.Tensor] = {-1: q_root}  # [V] q' at each node whose forward ran
        self.qj: list[torch.Tensor] = []  # sampling: the distribution node i was drawn from
        self.children: dict[int, list[int]] = {-1: []}
        self.heap: list[tuple[float, int, int, int]] = []  # (-value, tie, SLOT | PLACEHOLDER, node)
        self.gain = 1.0                   # 1 + sum of the created nodes' slot values
        self.first: list[float] = []      # first-child factors seen (for the running estimate)

    def path(self, i: int) -> list[int]:
        out = []
        while i >= 0:
            out.append(self.tokens[i])
            i = self.parents[i]
        return out[::-1]


class DynamicTree:
    """Grows dynamic draft trees with a :class:`ModelDrafter`; keeps the persistent estimates."""

    def __init__(self) -> None:
        self.calibration = EdgeCalibration()
        self.depth_rate = RankStats([PRIOR_DEPTH_RATE])
        self.first_factor = 0.5        # expected first-child factor of a node whose q' is unknown
        self.forwards_per_node = 0.5   # drafter forwards per drafted node (for the cost of drafting)
        self._tie = itertools.count()

    # -- the rule --------------------------------------------------------------------------------

    def _remaining(self, row: _Row, node: int) -> tuple[torch.Tensor, float]:
        """``q'_node`` without the node's children so far (unnormalised) and its mass."""
        q = row.q[node]
        rem = q.clone()
        if row.children[node]:
            rem[row.children[node]] = 0.0
        return rem, float(rem.sum())

    def _push_slot(self, row: _Row, node: int, sample: bool) -> None:
        rem, mass = self._remaining(row, node)
        if mass <= 1e-9:
            return
        q = row.q[node]
        f = float((rem * q).sum()) / mass if sample else float(rem.max())
        if not row.children[node]:
            row.first.append(f)
        value = row.reach[node] * self.calibration.accept(f)
        if value > 0:
            heapq.heappush(row.heap, (-value, next(self._tie), SLOT, node))

    def _push_placeholder(self, row: _Row, node: int) -> None:
        value = row.reach[node] * self.calibration.accept(self.first_factor)
        heapq.heappush(row.heap, (-value, next(self._tie), PLACEHOLDER, node))

    def _create(self, gen: Generation, row: _Row, value: float, node: int, sample: bool) -> None:
        """Pop of a slot of ``node``: add its next child (the slot's value was fixed before)."""
        rem, mass = self._remaining(row, node)
        if sample:
            qj = rem / mass  # [V]: the conditional law of this draw given the earlier siblings
            x = int(torch.multinomial(qj, 1, generator=gen.generators[row.b]))
            row.qj.append(qj)
        else:
            x = int(rem.argmax())
        f = float(row.q[node][x])
        me = len(row.tokens)
        row.tokens.append(x)
        row.parents.append(node)
        row.f.append(f)
        row.reach[me] = row.reach[node] * self.calibration.accept(f)
        row.children[node].append(x)
        row.children[me] = []
        row.gain += value
        self._push_slot(row, node, sample)
        self._push_placeholder(row, me)

    def _predicted(self, row: _Row, extra: int) -> list[float]:
        """Cumulative predicted gain of 0..extra more nodes: the heap's values, each followed by a
        chain shrinking by the (calibrated) first-child factor, best first."""
        a = self.calibration.accept(self.first_factor)
        vals = []
        for neg, _, kind, node in row.heap:
            if kind == PLACEHOLDER and node in row.q:
                continue  # stale: the node's real slot is in the heap
            v = -neg
            for _ in range(extra):
                vals.append(v)
                v *= a
                if v < 1e-4:
                    break
        vals.sort(reverse=True)
        out = [row.gain]
        for v in vals[:extra]:
            out.append(out[-1] + v)
        return out

    def _go_on(self, row: _Row, cost: Callable[[int], float], max_nodes: int) -> bool:
        i = len(row.tokens)
        gains = self._predicted(row, max_nodes - i)
        best, best_rate = i, gains[0] / cost(i)
        for m in sizes_up_to(max_nodes):
            if i < m < i + len(gains):
                rate = gains[m - i] / cost(m)
                if rate > best_rate * (1 + 1e-9):
                    best, best_rate = m, rate
        return best > i

    def _grow(self, gen: Generation, row: _Row, cost, max_nodes: int, adaptive: bool, sample: bool,
              grid: set[int]) -> bool:
        """Grow until done (False) or until the row needs a drafter forward (True)."""
        while True:
            i = len(row.tokens)
            if i >= max_nodes or not row.heap:
                return False
            if adaptive and i in grid and not self._go_on(row, cost, max_nodes):
                return False
            neg, _, kind, node = row.heap[0]
            if kind == PLACEHOLDER:
                if node in row.q:  # stale
                    heapq.heappop(row.heap)
                    continue
                return True
            heapq.heappop(row.heap)
            self._create(gen, row, -neg, node, sample)

    # -- one step --------------------------------------------------------------------------------

    @torch.inference_mode()
    def propose(self, gen: Generation, drafter: ModelDrafter, st: DrafterState, active: list[int],
                costs: CostModel, first_step: bool, max_nodes: int, adaptive: bool, sample: bool,
                margin: float = 1.0) -> tuple[list[Draft | None], list[TreeInfo | None]]:
        B = gen.num_rows
        drafts: list[Draft | None] = [None] * B
        infos: list[TreeInfo | None] = [None] * B
        rows_n = len(active)
        per_draft = costs.draft_cost(rows_n)
        base = costs.cost(rows_n, 1)

        def cost(n: int) -> float:  # a verify pass with n nodes, plus the drafting they need
            if n == 0:
                return base  # a plain step: no drafter forward at all
            verify = base if first_step else costs.cost(rows_n, 1 + n)
            # the root forward (catching up on committed tokens, q' at the root) is paid by any
            # draft, then about forwards_per_node forwards per node as the tree grows
            return (verify + per_draft * (1.0 + self.forwards_per_node * n)) * margin  # the ledger's margin

        if not active or (adaptive and plan_chain(self.depth_rate.rate()[0], max_nodes, cost) == 0):
            return drafts, infos  # not even a good chain would pay: no drafter forward this step
        t0 = time.perf_counter()
        lm = st.lm
        # catch up (as ModelDrafter.draft): committed tokens the cache lacks; q' at each root
        pending = [gen.tokens[b][st.cached[b]:] or [gen.tokens[b][-1]] for b in range(B)]
        logits = lm.forward(pending)[:, -1, :]  # [B, V_d]
        lm.commit([[] for _ in range(B)])
        st.cached = [c + len(p) for c, p in zip(st.cached, pending)]
        st.fed = [0] * B
        q_root = gen.process_draft(active, [[] for _ in active], drafter._fit(logits[active]))  # [n, V]
        rows = {b: _Row(b, q_root[i]) for i, b in enumerate(active)}
        for row in rows.values():
            self._push_slot(row, -1, sample)
        grid = set(sizes_up_to(max_nodes))
        growing = list(active)
        forwards = 1
        while growing:
            waiting = [b for b in growing if self._grow(gen, rows[b], cost, max_nodes, adaptive, sample, grid)]
            if not waiting:
                break
            # one drafter forward over the waiting rows' trees: q' at every node that lacks it
            lm.rollback([c - 1 for c in st.cached])  # the last committed token becomes pending again
            trees = [Draft(rows[b].tokens, rows[b].parents) if b in waiting else None for b in range(B)]
            logits = lm.forward([[t[-1]] for t in gen.tokens], trees)  # [B, 1 + N, V_d]
            lm.commit([[] for _ in range(B)])
            forwards += 1
            todo = [(b, i) for b in waiting for i in range(len(rows[b].tokens)) if i not in rows[b].q]
            q = gen.process_draft([b for b, _ in todo], [rows[b].path(i) for b, i in todo],
                                  drafter._fit(torch.stack([logits[b, 1 + i] for b, i in todo])))  # [n, V]
            for k, (b, i) in enumerate(todo):
                rows[b].q[i] = q[k]
                self._push_slot(rows[b], i, sample)
            growing = waiting
        nodes = 0
        for b, row in rows.items():
            if row.tokens:
                qs = torch.stack(row.qj) if sample else None
                drafts[b] = Draft(row.tokens, row.parents, qs)
                infos[b] = TreeInfo(self, row.f)
                nodes += len(row.tokens)
            if row.first:
                self.first_factor = 0.9 * self.first_factor + 0.1 * sum(row.first) / len(row.first)
        if nodes:
            self.forwards_per_node = 0.8 * self.forwards_per_node + 0.2 * (forwards - 1) * len(rows) / nodes
        costs.record_draft((time.perf_counter() - t0) / forwards)  # the root forward counts too
        return drafts, infos

    # -- statistics ------------------------------------------------------------------------------

    def observe(self, draft: Draft, info: TreeInfo, accepted: list[int]) -> None:
        self.calibration.observe(draft, info.f, accepted)
        node = -1
        for depth in range(len(accepted) + 1):  # did the accepted path go one node deeper?
            if not draft.children(node):
                break
            self.depth_rate.observe(0, depth < len(accepted))
            if depth < len(accepted):
                node = accepted[depth]

    def step(self) -> None:
        self.calibration.step()
        self.depth_rate.step()
