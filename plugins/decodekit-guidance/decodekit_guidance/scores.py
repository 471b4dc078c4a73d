"""The two scoring rules, as pure functions of logits (no model, no state).

Shapes: every tensor is ``[..., V]`` (in the plugin ``[B', J, V]``); the rule is applied to the
last dimension independently at every leading index.

* Classifier-free guidance (Sanchez et al., 2023)::

      log p̂(w) = log p_u(w) + γ · (log p_c(w) − log p_u(w))

  with ``log p = log_softmax(logits)`` on both branches (conditional ``c``, unconditional ``u``).
  HF transformers' ``UnbatchedClassifierFreeGuidanceLogitsProcessor`` computes the same
  expression, ``γ · (s_c − s_u) + s_u``, on the same log-softmaxed scores.

* Contrastive decoding (Li et al., 2023)::

      V_head = {x : p_exp(x) ≥ α · max_w p_exp(w)}
      score(x) = log p_exp(x) − β · log p_ama(x)   for x in V_head,   −inf otherwise

  ``log p_ama`` is the amateur's log-softmax at temperature ``τ`` (``log_softmax(z_ama / τ)``).

Example::

    >>> import torch
    >>> c = torch.tensor([[2.0, 1.0, -1.0]]); u = torch.tensor([[0.0, 1.0, 0.0]])
    >>> cfg_scores(c, u, 1.0).argmax(-1).item(), cfg_scores(c, u, 3.0).argmax(-1).item()
    (0, 0)
    >>> e = torch.tensor([3.0, 2.9, -5.0]); a = torch.tensor([5.0, 0.0, 0.0])  # amateur loves token 0
    >>> plausible(e, 0.1).tolist(), contrastive_scores(e, a, 0.1, 1.0).argmax().item()
    ([True, True, False], 1)
"""

from __future__ import annotations

import math

import torch


def cfg_scores(cond_logits: torch.Tensor, uncond_logits: torch.Tensor, guidance_scale: float) -> torch.Tensor:
    """``log p_u + γ (log p_c − log p_u)``: ``[..., V]`` × 2 → ``[..., V]`` (float32).

    A token the conditional branch has ruled out (``-inf`` in ``cond_logits``, e.g. by an earlier
    rescorer) stays ``-inf`` for every γ, instead of becoming NaN (γ = 0) or +inf (γ < 0).
    """
    if cond_logits.shape != uncond_logits.shape:
        raise ValueError(f"conditional logits {tuple(cond_logits.shape)} and unconditional logits "
                         f"{tuple(uncond_logits.shape)} differ in shape")
    lp_c = torch.log_softmax(cond_logits.float(), dim=-1)
    lp_u = torch.log_softmax(uncond_logits.float(), dim=-1)
    guided = guidance_scale * (lp_c - lp_u) + lp_u
    return guided.masked_fill(torch.isneginf(lp_c), float("-inf"))


def plausible(expert_logits: torch.Tensor, alpha: float) -> torch.Tensor:
    """The head ``V_head``: bool ``[..., V]``, True where ``p_exp(x) ≥ α · max p_exp``.

    Computed in log space, ``log p(x) ≥ log α + max log p``, so that tiny probabilities do not
    underflow. The most likely token is always in the set; ``-inf`` tokens never are.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    lp = torch.log_softmax(expert_logits.float(), dim=-1)
    top = lp.amax(dim=-1, keepdim=True)  # [..., 1]
    threshold = top + (math.log(alpha) if alpha > 0 else float("-inf"))
    return (lp >= threshold) & torch.isfinite(lp)


def contrastive_scores(expert_logits: torch.Tensor, amateur_logits: torch.Tensor, alpha: float,
                       beta: float, amateur_temperature: float = 1.0) -> torch.Tensor:
    """``log p_exp − β log p_ama`` on ``V_head``, ``-inf`` elsewhere: ``[..., V]`` (float32)."""
    if expert_logits.shape != amateur_logits.shape:
        raise ValueError(f"expert logits {tuple(expert_logits.shape)} and amateur logits "
                         f"{tuple(amateur_logits.shape)} differ in shape (the amateur must share the "
                         f"expert's vocabulary)")
    if amateur_temperature <= 0:
        raise ValueError(f"amateur_temperature must be > 0, got {amateur_temperature}")
    lp_e = torch.log_softmax(expert_logits.float(), dim=-1)
    lp_a = torch.log_softmax(amateur_logits.float() / amateur_temperature, dim=-1)
    score = lp_e - beta * lp_a
    return score.masked_fill(~plausible(expert_logits, alpha), float("-inf"))
