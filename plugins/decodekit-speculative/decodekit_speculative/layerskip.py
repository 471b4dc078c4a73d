"""Self-speculation: the target with some decoder layers skipped, sharing every weight.

:func:`skipped_view` returns a second model object whose decoder-layer list has the skipped
layers replaced by an identity; every other module (embeddings, kept layers, norm, head) *is*
the target's own module, so no weight is copied. The view gets its own KV cache (through its
own :class:`~decodekit.kv.CachedLM`); a skipped layer simply never writes its cache slot. Layer
0 is always kept, because transformers sizes the attention mask from the first layer's cache.

:func:`search_skip_set` picks the layers on the fly (``search: true``), in the spirit of SWIFT:
teacher-force the prompt through the target once, then through the target without each single
layer, and skip the layers whose removal changes the target's next-token distribution least
(mean KL divergence over the prompt's positions).
"""

from __future__ import annotations

import copy

import torch


class SkippedLayer(torch.nn.Module):
    """Stands in for a decoder layer: returns its hidden states unchanged."""

    def __init__(self, index: int):
        super().__init__()
        self.index = index

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return hidden_states


def decoder_layers(model: torch.nn.Module) -> tuple[list[str], torch.nn.ModuleList]:
    """The attribute path to the model's decoder-layer list and the list itself.

    The list is the ``ModuleList`` with ``config.num_hidden_layers`` entries (``model.layers`` in
    Llama / Qwen2, ``transformer.h`` in GPT-2).
    """
    n = getattr(model.config, "num_hidden_layers", None)
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == n and name:
            return name.split("."), module
    raise ValueError(f"layer_skip: cannot find the decoder layer list of {type(model).__name__} "
                     f"(a ModuleList of config.num_hidden_layers = {n} modules)")


def skipped_view(model: torch.nn.Module, skip: list[int]) -> torch.nn.Module:
    """A model that runs ``model`` without the layers in ``skip`` (weights shared, not copied)."""
    path, layers = decoder_layers(model)
    n = len(layers)
    bad = [i for i in skip if not 1 <= i < n]
    if bad:
        raise ValueError(f"skip_layers: {bad} out of range; the model has layers 0..{n - 1} and layer 0 is kept")
    # shallow-copy each module on the path to the layer list, so that replacing the list in the
    # copy leaves the target untouched; the copies share parameters and every other submodule
    root = _shallow(model)
    parent = root
    for attr in path[:-1]:
        child = _shallow(parent._modules[attr])
        parent._modules[attr] = child
        parent = child
    parent._modules[path[-1]] = torch.nn.ModuleList(
        [SkippedLayer(i) if i in set(skip) else layers[i] for i in range(n)]
    )
    return root


def _shallow(module: torch.nn.Module) -> torch.nn.Module:
    clone = copy.copy(module)
    clone._modules = dict(module._modules)  # own child table; the children themselves are shared
    return clone


def default_skip(num_layers: int, ratio: float) -> list[int]:
    """``round(ratio * L)`` layers spread evenly over ``1 .. L - 2`` (first and last layers kept)."""
    inner = list(range(1, num_layers - 1)) or list(range(1, num_layers))
    k = max(1, min(len(inner), round(ratio * num_layers)))
    step = len(inner) / k
    return sorted({inner[int(i * step)] for i in range(k)})


@torch.inference_mode()
def search_skip_set(model: torch.nn.Module, prompt_ids: list[int], ratio: float, max_tokens: int = 128) -> list[int]:
    """Skip the ``round(ratio * L)`` layers whose single removal moves p(next token) least."""
    _, layers = decoder_layers(model)
    n = len(layers)
    ids = torch.tensor([prompt_ids[-max_tokens:]], device=next(model.parameters()).device)
    ref = torch.log_softmax(model(input_ids=ids).logits.float(), dim=-1)  # [1, T, V]
    scores = []
    for i in range(1, n):
        view = skipped_view(model, [i])
        lp = torch.log_softmax(view(input_ids=ids).logits.float(), dim=-1)
        kl = (ref.exp() * (ref - lp)).sum(-1).mean()  # mean KL(p_target || p_without_layer_i)
        scores.append((float(kl), i))
    k = max(1, min(n - 1, round(ratio * n)))
    return sorted(i for _, i in sorted(scores)[:k])
