"""A candidate tree whose nodes' value is counted in hindsight, for deterministic tree drafters.

A deterministic drafter (token recycling) instantiates a fixed *candidate tree* of ``U`` nodes
each step, ``(parent, rank)`` per node, and drafts the subset it can afford. Which subset pays
depends on ``reach[i]``, the chance that verification accepts node ``i``: a step drafting the
set ``S`` commits ``1 + sum_{i in S} reach[i]`` tokens in expectation and costs ``cost(|S|)``.

Estimating ``reach`` from the nodes actually drafted (per-rank acceptance rates multiplied along
a path, assuming positions are independent) knows nothing of the nodes left out and is wrong
where acceptance is correlated along a path. But whether a node *would have been* accepted is
known once the text after the step is committed, drafted or not: verification accepts a node
exactly when its path's tokens are the tokens committed next.

* Greedy: the committed tokens are the target's argmax chain, whatever was drafted.
* Sampling: recursive rejection sampling over distinct deterministic siblings commits a token
  distributed as the processed ``p'``, and accepts a sibling exactly when that token is one of
  them; so the event "node ``i``'s path = the committed tokens" is the event that ``i`` is
  accepted, and its frequency is an unbiased estimate of ``reach[i]`` (the committed text is
  distributed as plain decoding, whatever the drafts).

So every step the whole candidate tree is instantiated (a list of ``U`` tokens), and when enough
of the continuation is committed each node is counted as matched or not: the matched nodes form
one path from the root. ``reach[i] = (hits[i] + w * prior[i]) / (visits + w)`` with counts
decayed by ``decay`` per observation. A node is matched only if its parent is, so
``hits[child] <= hits[parent]``; with a prior that also shrinks along a path, sorting the nodes
by ``reach`` (ties: template order) lists parents before children, and every prefix of that
order is a tree and, under the estimates, the best tree of its size.
"""

from __future__ import annotations

from typing import Callable

from decodekit.types import Draft

from decodekit_speculative.planning import best_prefix

WEIGHT = 3.0   # observations the prior counts as
DECAY = 0.99   # per observed step: the estimates follow roughly the last 100 steps


class HindsightTree:
    """``template``: ``(parent, rank, prior reach)`` per candidate node, parents first (``-1``: the
    root)."""

    def __init__(self, template: list[tuple[int, int, float]], weight: float = WEIGHT, decay: float = DECAY):
        self.parents = [p for p, _, _ in template]
        self.prior = [a for _, _, a in template]
        self.template = [(p, r) for p, r, _ in template]
        self.children: dict[int, list[int]] = {-1: []}
        for i, p in enumerate(self.parents):
            self.children[p].append(i)  # p is -1 or an earlier node: its list exists
            self.children[i] = []
        self.weight, self.decay = weight, decay
        self.hits = [0.0] * len(template)
        self.visits = 0.0

    def reach(self) -> list[float]:
        """Estimated chance that each candidate node is accepted."""
        w, v = self.weight, self.visits + self.weight
        return [(h + w * p) / v for h, p in zip(self.hits, self.prior)]

    def plan(self, max_nodes: int, cost: Callable[[int], float] | None) -> list[int]:
        """The candidate nodes to draft, parents first: the ``N <= max_nodes`` with the highest
        ``reach``, ``N`` maximising ``(1 + sum reach) / cost(N)`` (all ``max_nodes`` when ``cost``
        is None)."""
        reach = self.reach()
        order = sorted(range(len(reach)), key=lambda i: (-reach[i], i))[:max_nodes]
        if cost is None:
            return order
        return order[:best_prefix([reach[i] for i in order], cost)]

    def draft(self, tokens: list[int], chosen: list[int]) -> Draft | None:
        """The draft of the ``chosen`` nodes (parents first) of an instantiated candidate tree
        (``tokens[i] < 0``: node ``i`` missing, and then its subtree too)."""
        where: dict[int, int] = {}
        out, parents = [], []
        for i in chosen:
            if tokens[i] < 0:
                continue
            where[i] = len(out)
            out.append(tokens[i])
            parents.append(-1 if self.parents[i] < 0 else where[self.parents[i]])
        return Draft(out, parents) if out else None

    def matched(self, tokens: list[int], continuation: list[int], final: bool = False) -> list[int] | None:
        """The candidate nodes whose path equals the start of ``continuation`` (the tokens committed
        after the step), root side first; None while ``continuation`` is too short to tell, unless
        it is ``final`` (the row stopped: nothing deeper was accepted)."""
        path: list[int] = []
        node = -1
        while True:
            present = [c for c in self.children[node] if tokens[c] >= 0]
            if not present:
                return path
            if len(path) == len(continuation):
                return path if final else None
            nxt = continuation[len(path)]
            hit = next((c for c in present if tokens[c] == nxt), None)
            if hit is None:
                return path
            path.append(hit)
            node = hit

    def observe(self, path: list[int]) -> None:
        """Count one instantiated step whose matched nodes were ``path``."""
        d = self.decay
        self.hits = [h * d for h in self.hits]
        for i in path:
            self.hits[i] += 1.0
        self.visits = self.visits * d + 1.0
