"""Shared by the adaptive tree drafters (``aded``, ``tree: dynamic``): calibration and budget.

Both drafters estimate, for every draft node, the chance ``reach`` that verification gets to it:
the product along its path of per-edge acceptance estimates ``a = min(1, lambda * f)``, where
``f`` is the drafter's own probability for the edge (ADED: the tri-gram table's estimate of the
target's probability; DySpec: the draft model's ``q'``) and ``lambda`` a calibration factor
learned from what verification really accepted (:class:`EdgeCalibration`). A step that drafts
``N`` nodes then commits ``1 + sum(reach)`` tokens in expectation and costs ``cost(N)``;
:func:`decodekit_speculative.planning.best_prefix` picks the ``N`` with the best ratio.
"""

from __future__ import annotations

from decodekit.types import Draft

LAMBDA_RANGE = (0.05, 20.0)


class EdgeCalibration:
    """``lambda = (hits + w) / (predicted + w)``: accepted children over the sum of their ``f``.

    Observed at the root and at every accepted node of a verified draft (the nodes whose children
    verification looked at). Counts decay by ``decay`` per step, pulling ``lambda`` back to 1.
    """

    def __init__(self, weight: float = 3.0, decay: float = 0.97):
        self.weight, self.decay = weight, decay
        self.hits = 0.0
        self.predicted = 0.0

    @property
    def factor(self) -> float:
        lam = (self.hits + self.weight) / (self.predicted + self.weight)
        return min(max(lam, LAMBDA_RANGE[0]), LAMBDA_RANGE[1])

    def accept(self, f: float) -> float:
        """Calibrated acceptance estimate of an edge with drafter probability ``f``."""
        return min(1.0, self.factor * f)

    def observe(self, draft: Draft, f: list[float], accepted: list[int]) -> None:
        """``f[i]``: node ``i``'s edge probability; ``accepted``: the accepted root-to-node path."""
        node = -1
        for depth in range(len(accepted) + 1):
            nxt = accepted[depth] if depth < len(accepted) else None
            for c in draft.children(node):
                self.predicted += f[c]
                self.hits += float(c == nxt)
            if nxt is None:
                break
            node = nxt

    def step(self) -> None:
        self.hits *= self.decay
        self.predicted *= self.decay


class TreeInfo:
    """What the plugin's ``advance`` hands back for one row's draft: each node's edge ``f``."""

    def __init__(self, owner: object, f: list[float]):
        self.owner = owner
        self.f = f

    def observe(self, draft: Draft, accepted: list[int]) -> None:
        self.owner.observe(draft, self, accepted)
