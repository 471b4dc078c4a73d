"""The same model with some decoder layers skipped: a cheap amateur for contrastive decoding.

Inside :func:`skipping`, each skipped decoder layer of the shared model returns its input hidden
states unchanged (``h_out = h_in``: the residual stream jumps over the layer) and writes nothing
to the KV cache; outside it the model is untouched, so the expert's own passes are unaffected.
Layer 0 must stay: the cache reads the sequence length from its first layer.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch


def decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The ``ModuleList`` of decoder blocks of a HF causal LM (Llama/Qwen2/Mistral style or GPT-2)."""
    for path in ("model.layers", "transformer.h", "model.decoder.layers", "gpt_neox.layers"):
        obj: object = model
        for part in path.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                break
        if isinstance(obj, torch.nn.ModuleList):
            return obj
    raise ValueError(f"amateur_skip_layers: cannot find the decoder layers of {type(model).__name__}")


def check_skip(model: torch.nn.Module, skip: list[int]) -> list[int]:
    """Validate layer indices against ``model``; returns them sorted and de-duplicated."""
    n = len(decoder_layers(model))
    out = sorted(set(skip))
    if not out:
        raise ValueError("amateur_skip_layers must name at least one layer")
    bad = [i for i in out if not 0 <= i < n]
    if bad:
        raise ValueError(f"amateur_skip_layers: {bad} out of range; the model has layers 0..{n - 1}")
    if 0 in out:
        raise ValueError("amateur_skip_layers: layer 0 cannot be skipped (the KV cache's length is read from it)")
    return out


def _identity(hidden_states: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
    return hidden_states


@contextmanager
def skipping(model: torch.nn.Module, skip: list[int]) -> Iterator[None]:
    """Within the block, layers ``skip`` of ``model`` are the identity on the hidden states."""
    layers = decoder_layers(model)
    for i in skip:
        layers[i].forward = _identity  # an instance attribute shadows the class's forward
    try:
        yield
    finally:
        for i in skip:
            del layers[i].forward
