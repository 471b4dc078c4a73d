"""The n-gram side of Superposed Decoding's filter: counts from a corpus, interpolated per draft.

Superposed decoding feeds one mixed embedding, so all drafts share one next-token distribution;
the n-gram model is what tells the drafts apart: it scores a candidate token by the draft's own
last tokens. For context ``c`` (a draft's tokens, prompt included) and a candidate ``x``::

    P_ng(x | c) = sum_n lambda_n * count(c[-(n-1):] + x) / count(c[-(n-1):])   (0 for unseen contexts)
                + lambda_0 / |T|                                               (a floor: uniform over T)

``T`` is the set of candidate tokens being compared, ``lambda_0 = floor`` and the remaining mass is
split evenly over the n-gram orders, so ``P_ng`` is a distribution over ``T`` and never zero.
"""

from __future__ import annotations

from collections import Counter


class NGramModel:
    """Counts of every n-gram of the given ``orders`` (n >= 2) in ``corpus`` (lists of token ids)."""

    def __init__(self, corpus: list[list[int]], orders: list[int]):
        if not orders or any(n < 2 for n in orders):
            raise ValueError(f"superposed: ngram_orders must be integers >= 2, got {orders}")
        self.orders = sorted(set(orders))
        self.counts: Counter[tuple[int, ...]] = Counter()  # n-gram -> count
        self.context_counts: Counter[tuple[int, ...]] = Counter()  # (n-1)-gram followed by a token -> count
        for seq in corpus:
            for n in self.orders:
                for i in range(len(seq) - n + 1):
                    gram = tuple(seq[i:i + n])
                    self.counts[gram] += 1
                    self.context_counts[gram[:-1]] += 1

    def prob(self, context: list[int], token: int, n: int) -> float:
        """Maximum-likelihood ``P_n(token | last n-1 tokens of context)``; 0 for an unseen context."""
        if len(context) < n - 1:
            return 0.0
        ctx = tuple(context[len(context) - (n - 1):])
        total = self.context_counts.get(ctx, 0)
        return self.counts.get(ctx + (token,), 0) / total if total else 0.0

    def interpolated(self, context: list[int], candidates: list[int], floor: float) -> list[float]:
        """``P_ng(x | context)`` for each ``x`` in ``candidates`` (see the module docstring)."""
        if not 0 < floor <= 1:
            raise ValueError(f"superposed: ngram_floor must be in (0, 1], got {floor}")
        lam = (1.0 - floor) / len(self.orders)
        uniform = floor / len(candidates)
        return [uniform + lam * sum(self.prob(context, x, n) for n in self.orders) for x in candidates]
