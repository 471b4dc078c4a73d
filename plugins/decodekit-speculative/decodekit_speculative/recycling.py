"""Token recycling (Luo et al., "Turning Trash into Treasure"): drafts from an adjacency matrix.

``M [V, k]`` holds, for each token ``t``, the ``k`` most likely next tokens the target gave the
last time it scored a position right after ``t`` (``-1`` = never seen). Every target pass scores
the root and every draft node, so each pass refreshes up to ``1 + N`` rows of ``M`` for free,
rejected nodes included: the "trash" that is recycled.

A draft is a *static* tree template of ``(parent, rank)`` pairs instantiated breadth-first: a
node of rank ``r`` under a node holding token ``t`` holds ``M[t, r]``; the root's children
follow the row's last committed token. A template node whose parent token has no row in ``M``
yet is dropped together with its subtree. Siblings hold distinct tokens (distinct top-k
entries), which recursive rejection sampling with one-hot q needs.

The matrix persists across calls of the same pipeline on purpose (as in the paper): what one
answer taught about the target's next-token candidates helps the next answer. It only changes
which drafts are proposed, never what is accepted.
"""

from __future__ import annotations

import torch

from decodekit.types import Draft


class AdjacencyMatrix:
    """``M [V, k]`` long tensor on the CPU; ``update`` from scored positions, ``draft`` a tree."""

    def __init__(self, vocab_size: int, k: int):
        self.k = min(k, vocab_size)
        self.M = torch.full((vocab_size, self.k), -1, dtype=torch.long)

    def update(self, prev_tokens: torch.Tensor, logits: torch.Tensor) -> None:
        """``prev_tokens [n]``: the token before each scored position; ``logits [n, V]`` there."""
        if prev_tokens.numel() == 0:
            return
        top = torch.topk(logits.float(), self.k, dim=-1).indices.cpu()  # [n, k]
        self.M[prev_tokens.cpu()] = top

    def draft(self, last_token: int, template: list[tuple[int, int, float]]) -> tuple[Draft | None, list[int]]:
        """Instantiate ``template`` after ``last_token``; returns the draft and each node's rank."""
        M = self.M
        tokens: list[int] = []
        parents: list[int] = []
        ranks: list[int] = []
        where: list[int] = []  # template index -> draft node index, -2 if dropped
        for parent, rank, _ in template:
            if parent == -1:
                src, d_parent = last_token, -1
            else:
                d_parent = where[parent]
                if d_parent == -2:
                    where.append(-2)
                    continue
                src = tokens[d_parent]
            tok = int(M[src, rank])
            if tok < 0:
                where.append(-2)
                continue
            where.append(len(tokens))
            tokens.append(tok)
            parents.append(d_parent)
            ranks.append(rank)
        if not tokens:
            return None, []
        return Draft(tokens, parents), ranks
