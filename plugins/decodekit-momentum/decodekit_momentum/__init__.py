"""decodekit-momentum: momentum decoding (Lan et al., 2022) as a decodekit ``rescore`` plugin.

Pipeline entry::

    decoding: {strategy: greedy}
    plugins:
      - name: momentum
        k: 5            # candidates: the k most likely tokens
        alpha: 0.2      # weight of the resistance
        resistance: {form: table, values: [0, 1, 3, 4, 5, 5]}   # R(0) .. R(5)
"""

from __future__ import annotations

from decodekit import hookimpl
from decodekit_momentum.graph import Graph
from decodekit_momentum.plugin import Momentum, MomentumOptions, momentum_scores
from decodekit_momentum.resistance import (
    ConstantResistance,
    ExpResistance,
    LogResistance,
    TableResistance,
)

__all__ = [
    "Graph", "Momentum", "MomentumOptions", "momentum_scores",
    "TableResistance", "ConstantResistance", "LogResistance", "ExpResistance",
]


@hookimpl
def register_plugins(register):
    register("momentum", Momentum, options=MomentumOptions,
             description="momentum decoding: p(v) − α·R(repetition length) over the top-k (greedy only)")
