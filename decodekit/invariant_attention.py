"""Attention whose result for a query does not depend on the pass it is in: bfloat16 on a CPU.

Speculative decoding is lossless only if a verify pass scores every position exactly as a plain
step would: the same logits whether the position is scored alone, among the draft's other tokens,
or in a batch with padding. In float32 the kernels' different summation orders change logits
by rounding error only, which changes a greedy token only in a near-tie. In bfloat16 it is not
so: torch's CPU attention kernel rounds its output to bfloat16 after sums whose order depends on
how many queries share the call and how many masked keys follow, and one bfloat16 step of
difference in one layer's attention grows, layer after layer, into logits that differ well beyond
any near-tie (tests/test_attention.py sees it with sdpa on small random models). Greedy ties then
break differently and a speculative run leaves plain decoding's path.

:func:`invariant_attention` therefore computes every query by itself: from its own vector and
exactly the keys it may see, in order, the same way wherever it is. In a verify pass, a tree
pass or a padded batch, query ``i`` of row ``b`` gets the numbers and the arithmetic a plain
step gives it, so the same result, bit for bit, by construction. Two ways do it:

* decodekit's kernel (:mod:`decodekit.native`, bfloat16 with head sizes 32 to 128 on a CPU with
  AVX-512 BF16, in AMX tiles where the CPU has them): one call per layer and pass; each query's
  sums run over its own keys, read by column number, in an order that depends on nothing else
  in the call;
* elsewhere (float16, other head sizes, no compiler): one torch ``scaled_dot_product_attention``
  call per query, over that query alone and its keys gathered in order, without a mask: a
  plain step's call.

Which keys a query sees is read once per mask (every layer of a pass shares it).

A prefill (a pass with no cache) is the one pass every decoding of a prompt makes the same way,
so it needs neither: each row's prompt gets one causal sdpa call over its own tokens (after its
padding, in a batch), the call a single-row prefill of it makes. That holds only if nothing
else rides on the prefill: the speculative plugin drafts from the second pass on for models
with this attention (:func:`prefill_is_one_call`).

Costs on the embedded model, one core (docs/results/cpu_kernels.md has the table, with and without
the kernel): a verify pass over 8 / 16 / 32 new tokens costs 1.05 / 1.12 / 1.32 plain passes with
the kernel in AMX tiles (1.09 / 1.18 / 1.46 in AVX-512 vectors, 1.20 / 1.36 / 1.86 with one sdpa
call per query); a plain step and a prefill cost what they cost with sdpa.
tests/test_attention.py checks chains, trees and padded batches against single-token passes,
both ways; tests/test_native.py the kernel itself.
"""

from __future__ import annotations

from typing import Any

import torch

from decodekit import native

NAME = "decodekit_invariant"


class _KeyPlan:
    """Which keys each query of a pass sees, read from its mask ``[B or 1, 1, Q, C]``.

    ``prefix[b][i]``: the number of leading keys query ``i`` of row ``b`` sees when they are
    exactly the first ones, else None and :meth:`columns` gives their column indices.
    ``prefill[b]``: for a pass with no cache (``Q == C``) in which row ``b`` is its prompt after
    ``p`` padding columns, each of its tokens seeing the prompt up to itself, that ``p``; else None."""

    def __init__(self, mask: torch.Tensor, B: int, C: int):
        self.shape = (B, C)
        mask = mask[..., :C]
        if mask.dtype == torch.bool:
            visible = mask[:, 0]  # [B or 1, Q, C]
        else:  # additive: 0 where a query may attend, a large negative number elsewhere
            visible = mask[:, 0] > torch.finfo(mask.dtype).min / 2
            if not bool(((mask[:, 0] == 0) | ~visible).all()):
                raise NotImplementedError(f"{NAME} attention takes masks of 0 / -inf only, not additive biases")
        visible = visible.expand(B, -1, -1).cpu()                             # [B, Q, C]
        Q = visible.shape[1]
        counts = visible.sum(-1)                                              # [B, Q]
        is_prefix = (visible == (torch.arange(C) < counts[..., None])).all(-1)  # [B, Q]
        self.prefix = [[int(n) if p else None for n, p in zip(cs, ps)]
                       for cs, ps in zip(counts.tolist(), is_prefix.tolist())]
        # the same for decodekit's kernel (native.py): how many keys each query sees and, unless
        # they are the first ones for every query, their columns (read once, for both users)
        self.counts = counts.to(torch.int32).contiguous()                            # [B, Q]
        self.most = max(int(counts.max()), 1)
        self.device = mask.device
        self.cols = None
        if not bool(is_prefix.all()):
            # a stable sort puts each query's visible columns first, in order; the rest are zeroed
            first = torch.sort((~visible).to(torch.uint8), dim=-1, stable=True).indices[..., :self.most]
            seen = torch.arange(self.most) < counts[..., None]                        # [B, Q, most]
            self.cols = torch.where(seen, first, 0).to(torch.int32).contiguous()      # [B, Q, most]
        self.prefill: list[int | None] = [None] * B
        if Q == C:  # no cache: a row whose valid tokens see each other causally is a (padded) prompt
            col = torch.arange(C)
            for b in range(B):
                p = int((counts[b] == 0).sum())
                causal = (col[None, :] >= p) & (col[None, :] <= col[:, None]) & (col[:, None] >= p)  # [Q, C]
                if p < C and bool((visible[b] == causal).all()):
                    self.prefill[b] = p

    def columns(self, b: int, i: int) -> torch.Tensor:
        """The columns query ``i`` of row ``b`` sees, in order (long, on the mask's device)."""
        return self.cols[b, i, :int(self.counts[b, i])].long().to(self.device)


def _plan(mask: torch.Tensor, B: int, C: int) -> _KeyPlan:
    """The mask's :class:`_KeyPlan` over ``C`` keys, made by the first layer and kept on the mask
    tensor for the others (it goes with the mask; transformers and CachedLM build a new mask for
    every pass and never change one in place)."""
    plan = getattr(mask, "_decodekit_key_plan", None)
    if plan is None or plan.shape != (B, C):
        plan = _KeyPlan(mask, B, C)
        mask._decodekit_key_plan = plan
    return plan


def invariant_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                        attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                        is_causal: bool | None = None, **kwargs: Any) -> tuple[torch.Tensor, None]:
    """transformers' attention-function signature. ``query [B, H, Q, D]``, ``key`` / ``value``
    ``[B, Hkv, C, D]`` (``Hkv`` divides ``H``), ``attention_mask [B or 1, 1, Q, C]`` (bool, or
    0 / large negative floats) or None (then causal when ``Q > 1``, the last ``Q`` keys being the
    queries' own positions); returns ``[B, Q, H, D]``."""
    unsupported = [name for name in ("position_bias", "s_aux", "softcap") if kwargs.get(name) is not None]
    if dropout or kwargs.get("output_attentions") or unsupported:
        raise NotImplementedError(f"{NAME} attention has no dropout, attention weights, "
                                  f"{', '.join(unsupported) or 'position bias, soft-capping or sinks'}: load the "
                                  "model with attn_implementation='sdpa' for these")

    def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """``q [b, H, 1, D]`` over ``k`` / ``v [b, Hkv, c, D]`` -> ``[b, H, D]``: a plain step's call."""
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=scaling, enable_gqa=True)
        return out[:, :, 0]

    def prompt(b: int, p: int) -> torch.Tensor:
        """Row ``b``'s prompt after ``p`` padding columns, with no cache: one causal call over the
        prompt's own tokens, the call a single-row prefill of it makes -> ``[Q - p, H, D]``."""
        out = torch.nn.functional.scaled_dot_product_attention(
            query[b:b + 1, :, p:], key[b:b + 1, :, p:], value[b:b + 1, :, p:], is_causal=True, scale=scaling,
            enable_gqa=True)
        return out[0].transpose(0, 1)

    B, H, Q, D = query.shape
    C = key.shape[2]
    kernel = native.supports(query, key, value)  # one call for the whole pass, each query computed alone
    scale = scaling if scaling is not None else D ** -0.5
    if attention_mask is None:
        if Q > 1 and not (is_causal if is_causal is not None else getattr(module, "is_causal", True)):
            raise NotImplementedError(f"{NAME} attention is for causal models")
        if Q > 1 and Q == C:  # prefill of unpadded prompts: one call per row
            return torch.stack([prompt(b, 0) for b in range(B)]), None
        # a plain step (Q == 1) or a chain: query i sees the keys up to its own position, C - Q + i
        if kernel:
            return native.attention(query, key, value, native.causal_counts(B, Q, C), None, C, scale), None
        if Q == 1:
            return attend(query, key, value)[:, None], None
        rows = [attend(query[:, :, i:i + 1], key[:, :, :C - Q + i + 1], value[:, :, :C - Q + i + 1])
                for i in range(Q)]
        return torch.stack(rows, dim=1), None  # [B, Q, H, D]
    plan = _plan(attention_mask, B, C)
    if all(p is not None for p in plan.prefill):  # prefill of padded prompts: one call per row
        out = query.new_zeros(B, Q, H, D)  # padding queries: zeros
        for b, p in enumerate(plan.prefill):
            out[b, p:] = prompt(b, p)
        return out, None
    if kernel:
        return native.attention(query, key, value, plan.counts, plan.cols, plan.most, scale), None
    rows = []
    for b in range(B):
        for i in range(Q):
            n = plan.prefix[b][i]
            if n == 0:  # sees nothing (a padding query): zeros, not NaN
                rows.append(query.new_zeros(H, D))
                continue
            if n is not None:
                k, v = key[b:b + 1, :, :n], value[b:b + 1, :, :n]
            else:
                at = plan.columns(b, i)
                k, v = key[b:b + 1].index_select(2, at), value[b:b + 1].index_select(2, at)
            rows.append(attend(query[b:b + 1, :, i:i + 1], k, v)[0])
    return torch.stack(rows).view(B, Q, H, D), None


def prefill_is_one_call(model: torch.nn.Module) -> bool:
    """Whether ``model`` runs on this attention, whose prefill computes a prompt in one call over
    the prompt's tokens: a pass that adds draft tokens to the prefill computes the prompt
    differently from plain decoding's, so no draft may ride on it."""
    config = getattr(model, "config", None)
    return getattr(config, "_attn_implementation", None) == NAME


def register() -> None:
    """Make :data:`NAME` an attention implementation transformers knows, with sdpa's masks."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    if NAME not in AttentionInterface._global_mapping:
        AttentionInterface.register(NAME, invariant_attention)
        AttentionMaskInterface.register(NAME, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])
