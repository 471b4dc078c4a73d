"""Attention whose result for a query does not depend on the pass it is in: bfloat16 on a CPU.

Speculative decoding is lossless only if a verify pass scores every position exactly as a plain
step would: the same logits whether the position is scored alone, among the draft's other tokens,
or in a batch with padding. In float32 the kernels' different summation orders move logits by
~1e-5, which changes a greedy token only in a near-tie. In bfloat16 it is not so: torch's CPU
attention kernels round their output to bfloat16 after summing in an order that depends on how
many queries share the call and how many (masked) keys follow, and one bfloat16 step of
difference in one layer's attention grows to about one logit after 30 layers (the embedded
model: up to 0.9 between a pass over 16 new tokens and 16 single-token passes). Greedy ties then
break differently and a speculative run leaves plain decoding's path.

:func:`invariant_attention` computes each query row in float64 and rounds once, at the end, to
the model's dtype:

* ``q . k``: a product of two bfloat16 numbers (8-bit significands) is exact in float64, and so
  is the sum of 64 of them unless their magnitudes span more than ~2^37: the scores come out the
  same in any summation order, so whatever blocking the matrix product picks.
* softmax over the visible keys: masked keys give ``exp(-inf) = 0`` exactly; a query that sees
  no key at all (a padding row) gets zeros instead of NaN (0 * NaN would poison the rows that
  later attend to its values).
* ``sum_j p_j v_j``: float64, order-dependent only at ~1e-16 relative, far below the bfloat16
  rounding step (~4e-3) the result then takes; a different bfloat16 value would need the float64
  sum to fall within ~1e-16 of a rounding boundary.

With the packed bfloat16 linears of :mod:`decodekit.onednn` (bitwise the same rows for any
number of rows) a whole pass is then invariant: tests/test_attention.py checks a pass over 16
tokens, a tree pass and padded batches against single-token passes bit for bit. The cost is
small while decoding (a handful of queries against the cache) and quadratic float64 work in a
long prefill, done a block of queries at a time (``SCORES_PER_CHUNK``) to bound memory.
"""

from __future__ import annotations

from typing import Any

import torch

NAME = "decodekit_invariant"
SCORES_PER_CHUNK = 1 << 22  # float64 scores held at once: 32 MiB


def invariant_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                        attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                        is_causal: bool | None = None, **kwargs: Any) -> tuple[torch.Tensor, None]:
    """transformers' attention-function signature. ``query [B, H, Q, D]``, ``key`` / ``value``
    ``[B, Hkv, C, D]`` (``Hkv`` divides ``H``: query heads ``h*g .. h*g+g-1`` share K/V head ``h``),
    ``attention_mask [B or 1, 1, Q, C]`` (bool, or float added to the scores) or None (then causal
    when ``Q > 1``, the last ``Q`` keys being the queries' own positions); returns ``[B, Q, H, D]``."""
    unsupported = [name for name in ("position_bias", "s_aux") if kwargs.get(name) is not None]
    if dropout or kwargs.get("output_attentions") or unsupported:
        raise NotImplementedError(f"{NAME} attention has no dropout, attention weights, "
                                  f"{', '.join(unsupported) or 'position bias or sinks'}: load the model with "
                                  "attn_implementation='sdpa' for these")
    B, H, Q, D = query.shape
    Hkv, C = key.shape[1], key.shape[2]
    g = H // Hkv
    scale = scaling if scaling is not None else D ** -0.5
    softcap = kwargs.get("softcap")
    if attention_mask is None and Q > 1 and (is_causal if is_causal is not None else getattr(module, "is_causal", True)):
        attention_mask = torch.ones(Q, C, dtype=torch.bool, device=query.device).tril(C - Q)[None, None]
    k = key.to(torch.float64).transpose(-1, -2)  # [B, Hkv, D, C]
    v = value.to(torch.float64)                  # [B, Hkv, C, D]
    q = query.to(torch.float64, memory_format=torch.contiguous_format).view(B, Hkv, g, Q, D)
    if attention_mask is not None and attention_mask.dtype == torch.bool:  # -> added to the scores
        attention_mask = torch.zeros(attention_mask.shape, dtype=torch.float64, device=query.device).masked_fill_(
            ~attention_mask, float("-inf"))
    out = torch.empty(B, Q, H, D, dtype=query.dtype, device=query.device)
    step = max(1, SCORES_PER_CHUNK // max(1, B * H * C))
    for lo in range(0, Q, step):
        hi = min(Q, lo + step)
        scores = torch.matmul(q[:, :, :, lo:hi].reshape(B, Hkv, g * (hi - lo), D), k)  # [B, Hkv, g*Qc, C]
        scores = scores.view(B, Hkv, g, hi - lo, C)
        if softcap:
            scores = torch.tanh(scores * (scale / softcap)) * softcap
        elif scale != 1.0:
            scores = scores * scale
        if attention_mask is not None:
            scores = scores + attention_mask[:, :, None, lo:hi, :C]  # [B or 1, 1, 1, Qc, C]
        weights = torch.softmax(scores, dim=-1).nan_to_num_(0.0)  # a query that sees no key: zeros, not NaN
        ctx = torch.matmul(weights.view(B, Hkv, g * (hi - lo), C), v)  # [B, Hkv, g*Qc, D]
        out[:, lo:hi] = ctx.view(B, H, hi - lo, D).transpose(1, 2)
    return out, None


def register() -> None:
    """Make :data:`NAME` an attention implementation transformers knows, with sdpa's masks."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    if NAME not in AttentionInterface._global_mapping:
        AttentionInterface.register(NAME, invariant_attention)
        AttentionMaskInterface.register(NAME, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])
