"""The Q̂ estimate of Transfer Q* from rollout rewards.

For a candidate z after prefix s, ``R`` rollouts τ_1..τ_R are drawn from the baseline ρ_BL and
scored with the target reward r (and, for indirect transfer, with the reward r_BL the baseline is
aligned to). Under KL-regularised alignment the r-aligned policy is ρ_BL reweighted by
exp((r − r_BL)/β) at the trajectory level, so a self-normalised importance-weighted mean estimates
Q*(s, z) for r:

    w_i = exp((r(τ_i) − r_BL(τ_i)) / β) / Σ_l exp((r(τ_l) − r_BL(τ_l)) / β)
    Q̂(s, z) = Σ_i w_i · r(τ_i)

Direct transfer (r_BL = r, or no ``baseline_reward``) makes every w_i exactly 1/R: the plain mean.
"""

from __future__ import annotations

import torch


def transfer_weights(r: torch.Tensor, r_bl: torch.Tensor | None, beta: float) -> torch.Tensor:
    """``r, r_bl [..., R]`` → normalised rollout weights ``[..., R]`` (uniform when ``r_bl`` is None)."""
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    log_w = torch.zeros_like(r) if r_bl is None else (r - r_bl) / beta
    return torch.softmax(log_w, dim=-1)


def q_estimate(r: torch.Tensor, r_bl: torch.Tensor | None, beta: float) -> torch.Tensor:
    """``Q̂ [...] = Σ_i w_i · r_i`` over the last dimension (the rollouts)."""
    return (transfer_weights(r, r_bl, beta) * r).sum(dim=-1)
