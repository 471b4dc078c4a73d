"""decodekit-qstar: reward-guided decoding (Transfer Q*, ARGS) and offline reward functions.

Pipeline entry::

    plugins:
      - name: qstar
        mode: transfer_q          # or args
        reward: {name: keywords, keywords: [ocean, blue]}
        k: 4
        num_rollouts: 2
        rollout_len: 8
        alpha: 5.0

Rewards (``reward:``) are registered through the host's ``register_rewards`` hook: ``count``,
``keywords``, ``readability``, ``judge``, ``classifier``, ``callable`` (see :mod:`.rewards`).
"""

from decodekit.hookspecs import hookimpl
from decodekit_qstar.estimate import q_estimate, transfer_weights
from decodekit_qstar.options import QStarOptions, build_reward
from decodekit_qstar.plugin import QStar
from decodekit_qstar.rewards import REWARDS

__all__ = ["QStar", "QStarOptions", "build_reward", "q_estimate", "transfer_weights", "REWARDS"]


@hookimpl
def register_plugins(register):
    register("qstar", QStar, options=QStarOptions,
             description="reward-guided decoding: Transfer Q* (rollouts from a baseline) or ARGS")


@hookimpl
def register_rewards(register):
    for name, factory, options, description in REWARDS:
        register(name, factory, options=options, description=description)
