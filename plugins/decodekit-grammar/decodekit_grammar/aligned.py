"""ASAp (Park et al., "Grammar-Aligned Decoding", 2024): a trie of sampled prefixes.

Constrained decoding samples ``t`` from ``P(t | w) · 1[w·t allowed]`` renormalised, which is not
the model's distribution conditioned on the whole output being grammatical,
``P(s | s ∈ L) = P(s) 1[s ∈ L] / Z``. That needs the expected future grammaticality
``EFG(w) = Σ_s P(s | w) 1[w·s ∈ L]``; sampling from ``Q(t | w) ∝ P(t | w) · EFG(w·t)`` is exact.

ASAp keeps an over-approximation ``c(w) ≥ EFG(w)`` on a trie of the prefixes sampled so far:

* an unexpanded node has ``c = 1``; a disallowed token ``c = 0``; an EOS child after a complete
  match ``c = 1``;
* a node is *expanded* when the model's raw next-token distribution ``P(· | w)`` is seen there;
  then ``c(w) = Σ_t P(t | w) c(w·t) = A(w) − Σ_{expanded t} P(t | w) (1 − c(w·t))`` with
  ``A(w) = Σ_{t allowed} P(t | w)`` (the allowed mass). So a node stores ``A``, its children
  and each child's ``P(t | w)``: never a full distribution.
* after every sample the ``c`` of the nodes on its path are recomputed from the leaf to the root.

As samples accumulate, ``c`` converges to ``EFG`` on the prefixes that matter and ``Q`` to the
grammar-conditioned distribution.
"""

from __future__ import annotations

import math
import pickle
from pathlib import Path


class Node:
    __slots__ = ("parent", "p", "allowed_mass", "children", "c", "terminal")

    def __init__(self, parent: "Node | None", p: float, terminal: bool = False):
        self.parent = parent
        self.p = p                     # P(token | parent prefix), the raw model probability
        self.allowed_mass: float | None = None  # A(w); None while unexpanded
        self.children: dict[int, Node] = {}
        self.c = 1.0                   # estimate of the expected future grammaticality
        self.terminal = terminal       # an EOS child: a complete grammatical output

    def recompute(self) -> None:
        if self.terminal or self.allowed_mass is None:
            return
        lost = sum(ch.p * (1.0 - ch.c) for ch in self.children.values() if not ch.terminal)
        self.c = max(0.0, self.allowed_mass - lost)


class Trie:
    """Tries keyed by prompt (token ids); persistent across calls of one plugin instance."""

    def __init__(self) -> None:
        self.roots: dict[tuple[int, ...], Node] = {}

    def reset(self) -> None:
        self.roots.clear()

    def save(self, path: str | Path) -> None:
        """Write the tries as flat rows ``(parent row, token, p, A, c, terminal)`` (no recursion)."""
        rows: list[tuple] = []
        roots: dict[tuple[int, ...], int] = {}
        for prompt, root in self.roots.items():
            roots[prompt] = len(rows)
            rows.append((-1, -1, root.p, root.allowed_mass, root.c, root.terminal))
            stack = [(len(rows) - 1, root)]
            while stack:
                k, node = stack.pop()
                for t, ch in node.children.items():
                    rows.append((k, t, ch.p, ch.allowed_mass, ch.c, ch.terminal))
                    stack.append((len(rows) - 1, ch))
        with open(path, "wb") as f:
            pickle.dump({"version": 1, "roots": roots, "rows": rows}, f, protocol=pickle.HIGHEST_PROTOCOL)

    def load(self, path: str | Path) -> None:
        """Replace the tries with those saved at ``path``."""
        with open(path, "rb") as f:
            data = pickle.load(f)
        nodes: list[Node] = []
        for parent, t, p, mass, c, terminal in data["rows"]:
            node = Node(nodes[parent] if parent >= 0 else None, p, terminal)
            node.allowed_mass, node.c = mass, c
            if parent >= 0:
                nodes[parent].children[t] = node
            nodes.append(node)
        self.roots = {prompt: nodes[k] for prompt, k in data["roots"].items()}

    def find(self, prompt: tuple[int, ...], tokens: list[int]) -> Node | None:
        node = self.roots.get(prompt)
        for t in tokens:
            if node is None:
                return None
            node = node.children.get(t)
        return node

    def root(self, prompt: tuple[int, ...]) -> Node:
        if prompt not in self.roots:
            self.roots[prompt] = Node(None, 1.0)
        return self.roots[prompt]

    def num_nodes(self) -> int:
        stack, n = list(self.roots.values()), 0
        while stack:
            node = stack.pop()
            n += 1
            stack.extend(node.children.values())
        return n


def log_c(node: Node | None, size: int):
    """``log c(w·t)`` for the expanded children of ``node`` as (ids, values); others are 0 (c = 1)."""
    if node is None:
        return [], []
    ids, vals = [], []
    for t, ch in node.children.items():
        if not ch.terminal:
            ids.append(t)
            vals.append(math.log(ch.c) if ch.c > 0 else -math.inf)
    return ids, vals


def propagate(node: Node) -> None:
    """Recompute ``c`` from ``node`` up to the root."""
    while node is not None:
        node.recompute()
        node = node.parent
