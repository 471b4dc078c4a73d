"""How much to draft: measured verify cost, acceptance estimates, and the length / tree that pay.

A step that drafts ``N`` nodes costs one target pass over ``s = 1 + N`` new tokens, ``c(s)``,
plus the drafter's own work, and commits ``E(N)`` tokens in expectation. Plain decoding commits
1 token for ``c(1)``. Each step the planner picks the ``N`` that maximises ``E(N) / cost(N)``,
so when drafting does not pay (poor acceptance, expensive wide passes on a CPU) it picks
``N = 0`` and the step is a plain one.

* Chains: with per-token acceptance ``a``, ``E(L) = 1 + a + ... + a^L``.
* Trees: with ``a_r`` the chance that the rank-``r`` candidate at a node is the one accepted,
  a node whose path from the root has ranks ``r_1..r_d`` is reached with probability
  ``prod a_{r_i}`` (positional independence, as in Medusa / Sequoia / token recycling's static
  tree) and ``E = 1 + sum`` of those over the tree. The best ``N``-node tree under this model takes
  the ``N`` largest path products, which best-first expansion yields in order (a path's prefix
  always has a larger product, so every prefix of the list is a tree).
"""

from __future__ import annotations

import heapq
import math
import statistics
from dataclasses import dataclass, field
from typing import Callable

# Draft sizes the planner considers: few distinct pass widths keep the cost table small.
SIZE_GRID = (0, 1, 2, 3, 4, 5, 6, 8, 10, 12, 16, 20, 24, 32, 40, 48, 64, 80, 96, 128, 160, 192, 256)
PRIOR_SLOPE = 0.03  # before measuring: a pass over s tokens costs 1 + 0.03 (s - 1) plain passes
WINDOW = 9          # timings kept per (rows, s); their median is the cost (robust to load spikes)
MIN_SAMPLES = 3     # timings before a width's own median is trusted over its neighbours' prediction
EMA = 0.3           # weight of a new drafter timing in its running mean


class CostModel:
    """The cost of one target pass by ``(rows, s)``: measured seconds, or fixed relative costs.

    ``fixed`` (the ``verify_costs`` option) maps ``s`` to a relative cost and turns timing off;
    sizes in between are interpolated linearly, beyond the largest one held constant.
    Until the plain pass (``s = 1``) has been timed ``MIN_SAMPLES`` times, wider passes cost
    infinity: drafting is judged against plain decoding, so that is measured first.
    Measured mode keeps the last ``WINDOW`` timings of a pass per ``(rows, s)`` and uses their
    median, so that a pass slowed down by another process on the machine does not stop a width
    from being used for good; an unmeasured ``s`` is interpolated between measured neighbours, or
    scaled from the nearest one by the prior ``1 + PRIOR_SLOPE (s - 1)``. The table lives on the plugin object on purpose: it describes the
    device and the model, not one call.
    """

    def __init__(self, fixed: dict[int, float] | None = None):
        self.fixed = dict(sorted(fixed.items())) if fixed else None
        self.timings: dict[tuple[int, int], list[float]] = {}
        self.draft_seconds: float | None = None  # one drafter forward (model drafters)
        self._costs: dict[tuple[int, int], float] = {}  # cost() since the last record(): planners ask often

    @property
    def measured(self) -> bool:
        return self.fixed is None

    def record(self, rows: int, s: int, seconds: float) -> None:
        if self.fixed is not None:
            return
        recent = self.timings.setdefault((rows, s), [])
        recent.append(seconds)
        del recent[:-WINDOW]
        self._costs.clear()

    def trusted(self, rows: int, s: int) -> bool:
        """Whether a pass of width ``s`` over ``rows`` rows has been timed often enough to trust."""
        return len(self.timings.get((rows, s), ())) >= MIN_SAMPLES

    def record_draft(self, seconds: float) -> None:
        if self.fixed is None:
            old = self.draft_seconds
            self.draft_seconds = seconds if old is None else (1 - EMA) * old + EMA * seconds

    def cost(self, rows: int, s: int) -> float:
        """Cost of a pass over ``s`` new tokens for ``rows`` rows (seconds, or relative units)."""
        if self.fixed is not None:
            return _interpolate(self.fixed, s, flat_beyond=True)
        known = self._costs.get((rows, s))
        if known is None:
            known = self._costs[rows, s] = self._measured_cost(rows, s)
        return known

    def _measured_cost(self, rows: int, s: int) -> float:
        if s > 1 and not self.trusted(rows, 1):
            # every draft is weighed against a plain pass: time plain passes first, or a proposer
            # that always finds something to draft would never measure what it competes with
            return math.inf
        # widths timed at least MIN_SAMPLES times are trusted; a width timed once or twice (maybe
        # during a load spike) counts at most as its trusted neighbours predict, so it is retried
        timed = {k[1]: v for k, v in self.timings.items() if k[0] == rows}
        trusted = {w: statistics.median(v) for w, v in timed.items() if len(v) >= MIN_SAMPLES}
        guess = _interpolate(trusted, s, flat_beyond=False) if trusted else None
        if s in timed and s not in trusted:
            own = min(timed[s])
            return own if guess is None else min(own, guess)
        if guess is not None:
            return guess
        if timed:  # nothing trusted yet: scale the nearest timed width by the prior
            return _interpolate({w: min(v) for w, v in timed.items()}, s, flat_beyond=False)
        return _prior(s)

    def draft_cost(self, rows: int) -> float:
        """Seconds of one drafter step, in the units of :meth:`cost` (0 when unknown or fixed)."""
        if self.fixed is not None or self.draft_seconds is None:
            return 0.0
        if not any(k[0] == rows for k in self.timings):
            return 0.0  # target passes not timed yet: units differ
        return self.draft_seconds


def _prior(s: int) -> float:
    return 1.0 + PRIOR_SLOPE * (s - 1)


def _interpolate(table: dict[int, float], s: int, *, flat_beyond: bool) -> float:
    if s in table:
        return table[s]
    xs = sorted(table)
    below = [x for x in xs if x < s]
    above = [x for x in xs if x > s]
    if below and above:
        x0, x1 = below[-1], above[0]
        w = (s - x0) / (x1 - x0)
        return (1 - w) * table[x0] + w * table[x1]
    near = below[-1] if below else above[0]
    if flat_beyond and below:
        return table[near]
    return table[near] * _prior(s) / _prior(near)


LOSS_ALLOWANCE = 0.02  # DraftLedger: a plain step pays off this many plain passes of drafting's debt
CREDIT_PASSES = 2.0    # DraftLedger: gains banked beyond this many plain passes are not kept
DEBT_MARGIN = 0.5      # DraftLedger: each plain pass of debt makes drafts look this much dearer


class DraftLedger:
    """How much time drafting has lost against plain decoding so far, and how sure a draft must be.

    The planner drafts where its estimates say a draft pays; estimates are noisy, and after a back-off
    they drift back to their priors, so that drafting is probed again. Where drafts do not pay (open
    chat on a device whose wide passes are dear) those marginal probes are what makes speculative
    decoding slower than plain decoding. The ledger keeps score with the steps' own measurements.
    ``balance`` is in plain passes (``c1``, the measured cost of one):

    * after a step with drafts, ``balance += t / c1 - k``: ``t`` the step's seconds (proposing plus
      the target pass), ``k`` the tokens a row committed (mean over the rows), which plain decoding
      would have spent ``k`` passes on (negative: a gain);
    * after a plain step, ``balance -= LOSS_ALLOWANCE``;
    * work done for drafting outside a step (token recycling's LM-head product over the prompt) adds
      ``t / c1``;
    * the balance never falls below ``-CREDIT_PASSES``, where it starts.

    While the balance is a debt, :meth:`margin` scales the planned cost of every draft by
    ``1 + DEBT_MARGIN * debt``: a draft whose estimate is marginal waits (for about ``debt /
    LOSS_ALLOWANCE`` plain steps, the time the debt takes to amortise), while one the estimates say
    pays well (a long copy) still goes. Where drafts pay, the balance sits at the credit floor and
    the margin is 1. It lives on the plugin object with the costs (it describes the device and the
    workload, and changes only which drafts are proposed, never what is accepted).
    """

    def __init__(self) -> None:
        self.balance = -CREDIT_PASSES  # plain passes lost to drafting (negative: gained)

    def margin(self) -> float:
        """Factor on the planned cost of a step with drafts (1 unless drafting is in debt)."""
        return 1.0 + DEBT_MARGIN * max(0.0, self.balance)

    def record(self, seconds: float, tokens_per_row: float, plain_pass: float, drafted: bool) -> None:
        """Book one step: ``seconds`` from propose to verify's end, ``tokens_per_row`` committed,
        ``plain_pass`` the seconds of a plain pass."""
        if drafted:
            self._add(seconds, plain_pass, -tokens_per_row)
        else:
            self._add(0.0, plain_pass, -LOSS_ALLOWANCE)

    def spend(self, seconds: float, plain_pass: float) -> None:
        """Book work done for drafting outside a step: a pure cost the drafts have to earn back."""
        self._add(seconds, plain_pass, 0.0)

    def _add(self, seconds: float, plain_pass: float, passes: float) -> None:
        if math.isfinite(plain_pass) and plain_pass > 0.0:
            self.balance = max(self.balance + seconds / plain_pass + passes, -CREDIT_PASSES)


@dataclass
class RankStats:
    """Decayed counts of how often the rank-``r`` candidate at a node was accepted.

    ``rate()[r] = (hits[r] + weight * prior[r]) / (visits[r] + weight)``. After every step all
    counts are multiplied by ``decay``, so an estimate that made the planner stop drafting drifts
    back to the prior, and drafting is probed again later (that is how a proposer backs off
    where drafts do not pay and returns where they do).
    """

    prior: list[float]
    weight: float = 3.0
    decay: float = 0.97
    hits: list[float] = field(default_factory=list)
    visits: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.hits = [0.0] * len(self.prior)
        self.visits = [0.0] * len(self.prior)

    def rate(self) -> list[float]:
        return [clamp_rate((h + self.weight * p) / (v + self.weight))
                for h, v, p in zip(self.hits, self.visits, self.prior)]

    def observe(self, rank: int, hit: bool) -> None:
        self.visits[rank] += 1.0
        self.hits[rank] += float(hit)

    def step(self) -> None:
        self.hits = [h * self.decay for h in self.hits]
        self.visits = [v * self.decay for v in self.visits]


def sizes_up_to(n: int) -> list[int]:
    return [s for s in SIZE_GRID if s <= n] + ([n] if n not in SIZE_GRID else [])


def chain_gain(a: float, length: int) -> float:
    """Expected tokens committed by a chain of ``length`` with per-token acceptance ``a``."""
    if a >= 1.0:
        return float(length + 1)
    return (1.0 - a ** (length + 1)) / (1.0 - a)


def plan_chain(a: float, max_len: int, cost: "callable") -> int:
    """The chain length in ``0..max_len`` that maximises ``chain_gain / cost(length)``."""
    best, best_rate = 0, 1.0 / cost(0)
    for n in sizes_up_to(max_len)[1:]:
        r = chain_gain(a, n) / cost(n)
        if r > best_rate * (1 + 1e-9):
            best, best_rate = n, r
    return best


def tree_template(rates: list[float], max_nodes: int) -> list[tuple[int, int, float]]:
    """Best-first template: ``(parent, rank, reach)`` per node, ``parent`` an earlier index or -1.

    ``reach`` is the probability of reaching the node, the product of ``rates`` along its path.
    """
    out: list[tuple[int, int, float]] = []
    heap = [(-rates[r], -1, r) for r in range(len(rates)) if rates[r] > 0]
    heapq.heapify(heap)
    while heap and len(out) < max_nodes:
        neg, parent, rank = heapq.heappop(heap)
        out.append((parent, rank, -neg))
        me = len(out) - 1
        for r in range(len(rates)):
            if rates[r] > 0:
                heapq.heappush(heap, (neg * rates[r], me, r))
    return out


def best_prefix(reach: list[float], cost: Callable[[int], float]) -> int:
    """The ``N`` in ``0..len(reach)`` maximising ``(1 + sum(reach[:N])) / cost(N)``.

    Only the planner's size grid is considered (few distinct pass widths keep the cost table
    small). ``reach`` is in the order the nodes were added, so every prefix is a tree.
    """
    gains = [1.0]
    for r in reach:
        gains.append(gains[-1] + r)
    best, best_rate = 0, 1.0 / cost(0)
    for n in sizes_up_to(len(reach))[1:]:
        rate = gains[n] / cost(n)
        if rate > best_rate * (1 + 1e-9):
            best, best_rate = n, rate
    return best


def depth_tree_template(rates: list[list[float]], max_nodes: int) -> list[tuple[int, int, int, float]]:
    """Best-first tree: ``(parent, depth, rank, reach)`` per node (``depth`` from 1).

    ``rates[d - 1][r]``: estimated chance that the rank-``r`` candidate at depth ``d`` is accepted
    given its parent was; ``reach`` is the product along the node's path. Nodes come out in order
    of decreasing reach, so every prefix of the list is a tree and the best tree of its size.
    """
    out: list[tuple[int, int, int, float]] = []
    heap = [(-rates[0][r], -1, 1, r) for r in range(len(rates[0])) if rates[0][r] > 0] if rates else []
    heapq.heapify(heap)
    while heap and len(out) < max_nodes:
        neg, parent, depth, rank = heapq.heappop(heap)
        out.append((parent, depth, rank, -neg))
        me = len(out) - 1
        if depth < len(rates):
            for r, a in enumerate(rates[depth]):
                if a > 0:
                    heapq.heappush(heap, (neg * a, me, depth + 1, r))
    return out


def clamp_rate(a: float) -> float:
    return min(max(a, 0.0), 1.0 - 1e-6) if math.isfinite(a) else 0.0
