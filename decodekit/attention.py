"""Grouped-query attention over a masked multi-token pass without copying K and V on a CPU.

Models with grouped-query attention (the embedded SmolLM2: 9 query heads share 3 key/value
heads) give ``H`` query heads ``Hkv < H`` key/value heads. transformers' ``sdpa`` attention
passes ``enable_gqa=True`` to ``scaled_dot_product_attention`` only when there is no attention
mask (on CUDA a mask would force the slow math kernel), and for one query token it folds the
groups into the query. Every other pass repeats each K/V head ``H / Hkv`` times first: a copy of
the whole cache, ``[B, Hkv, C, D] -> [B, H, C, D]`` for K and for V, in every layer. A verify
pass of speculative decoding is exactly that case (several new tokens after a cache, so the
causal mask is not square and is passed explicitly), and so is any batch with padding. On the
embedded model with 200 cached tokens the copies cost 3-4 ms a pass, about 5 % of a pass over 4
new tokens (one core, docs/results/attention.md).

torch's CPU kernels take ``enable_gqa`` with a mask and read each K/V head for its group of
query heads in place; the result is bitwise the same (tests/test_attention.py). :func:`use_cpu_gqa`
registers that as the attention implementation ``decodekit_sdpa`` and switches a model to it.
Everything else (one query token, no mask, another device, position biases, soft-capping) goes
to transformers' own ``sdpa`` function unchanged.

:func:`use_cpu_attention` is what loading calls: bfloat16 and float16 models on a CPU get
:mod:`decodekit.invariant_attention` instead (needed there to keep speculative decoding exact),
float32 models with grouped-query attention get ``decodekit_sdpa``.
"""

from __future__ import annotations

from typing import Any

import torch

NAME = "decodekit_sdpa"


def sdpa_gqa_cpu(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                 attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                 is_causal: bool | None = None, **kwargs: Any) -> tuple[torch.Tensor, None]:
    """transformers' attention-function signature. ``query [B, H, Q, D]``, ``key`` / ``value``
    ``[B, Hkv, C, D]``, ``attention_mask [B or 1, 1, Q, C]`` (bool, or float added to the scores);
    returns ``[B, Q, H, D]``."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    groups = getattr(module, "num_key_value_groups", 1)
    delegate = (attention_mask is None or query.shape[2] == 1 or groups == 1 or query.device.type != "cpu"
             or kwargs.get("position_bias") is not None or kwargs.get("softcap") is not None
             or kwargs.get("output_attentions", False))
    if delegate:  # nothing to save, or a feature only transformers' function handles
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, is_causal=is_causal, **kwargs)
    # the mask carries causality (its last Q columns are the new tokens), so is_causal stays False
    out = torch.nn.functional.scaled_dot_product_attention(
        query, key, value, attn_mask=attention_mask, dropout_p=dropout, scale=scaling, enable_gqa=True)  # [B, H, Q, D]
    return out.transpose(1, 2).contiguous(), None


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    if NAME not in AttentionInterface._global_mapping:
        AttentionInterface.register(NAME, sdpa_gqa_cpu)
        AttentionMaskInterface.register(NAME, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])  # the same masks as sdpa


def _sdpa_on_cpu(model: torch.nn.Module) -> torch.dtype | None:
    """The dtype of a model on a CPU that uses transformers' ``sdpa`` attention; None for any other."""
    config = getattr(model, "config", None)
    if config is None or getattr(config, "_attn_implementation", None) != "sdpa":
        return None
    param = next(model.parameters())
    return param.dtype if param.device.type == "cpu" else None


def use_cpu_gqa(model: torch.nn.Module) -> bool:
    """Switch ``model`` (in place) from ``sdpa`` to :func:`sdpa_gqa_cpu` if it is on a CPU, uses
    ``sdpa`` and has grouped-query attention; return whether it did. Outputs stay bitwise the same."""
    if _sdpa_on_cpu(model) is None:
        return False
    config = model.config
    heads, kv_heads = getattr(config, "num_attention_heads", None), getattr(config, "num_key_value_heads", None)
    if not heads or not kv_heads or heads == kv_heads:
        return False
    _register()
    model.set_attn_implementation(NAME)
    return True


REDUCED_PRECISION = (torch.bfloat16, torch.float16)


def use_cpu_attention(model: torch.nn.Module) -> str | None:
    """Switch a CPU model that uses ``sdpa`` (in place) to the attention decodekit runs it with;
    return that implementation's name, or None where the model is left alone.

    * bfloat16 / float16: :func:`~decodekit.invariant_attention.invariant_attention`, whose result
      for a position does not depend on how many tokens share the pass (speculative decoding's
      verify passes then score exactly as plain steps do);
    * float32 with grouped-query attention: :func:`sdpa_gqa_cpu` (bitwise sdpa, no K/V copies).
    """
    from decodekit import invariant_attention

    if _sdpa_on_cpu(model) in REDUCED_PRECISION:
        invariant_attention.register()
        model.set_attn_implementation(invariant_attention.NAME)
        return invariant_attention.NAME
    return NAME if use_cpu_gqa(model) else None
