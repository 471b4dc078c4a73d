"""Arg-max and top-k over the last dimension, by blocks on the CPU.

On the CPU, torch's ``argmax`` and ``topk`` over a vocabulary-wide row run far slower than a plain
max-reduction, which is vectorised. Every verify step takes an argmax over all its positions, and
token recycling and ADED a top-k: for the 33 positions of a tree step over V = 49152 that was
1.4 ms (argmax) and 2.0 ms (top-8) on one core, and is 0.28 ms and 0.36 ms by blocks
(docs/results/reductions.md, ``benchmarks/reductions.py``). Both answers lie in the blocks with
the largest maxima, so one vectorised pass over the row finds the blocks and the rest works on a
few blocks only. View a row ``[V]`` as ``[V / BLOCK, BLOCK]`` and let ``bmax`` be each block's max:

* **argmax**: blocks before the first one with ``bmax == max`` hold only smaller values, so that
  block holds the first maximal element, and an argmax inside it finds it. The result is
  torch's exactly (the first index of the maximum).
* **top-k**: take the ``k`` blocks with the largest ``bmax``. An element ``e`` outside them is at
  most its own block's max, which is at most each chosen block's max: the chosen blocks hold ``k``
  elements (their maxima) that are each ``>= e``. So the top-k values all lie in the chosen
  blocks, and a top-k over their ``k * BLOCK`` elements gives torch's values, largest first. Among
  equal values the indices may differ from torch's choice, as they may between torch versions.

Rows holding NaN go to torch (its argmax and topk rank NaN highest, while NaN compares unequal to
everything, itself included, so the block search would miss it). So does every tensor off the CPU,
where torch's kernels are already parallel, and any vocabulary that is not a multiple of ``BLOCK``.
"""

from __future__ import annotations

import torch

BLOCK = 64  # elements per block: a divisor of common vocabulary sizes (32000, 49152, 151936, ...)


def _block_maxima(x: torch.Tensor, k: int = 1) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``x [..., V]`` → ``(blocks [R, V/BLOCK, BLOCK], bmax [R, V/BLOCK])``, or None where torch's own
    op is the one to use (off the CPU, a vocabulary not in whole blocks, too few blocks, NaN)."""
    V = x.shape[-1]
    if not (x.device.type == "cpu" and x.is_floating_point() and x.numel() > 0
            and V % BLOCK == 0 and V // BLOCK >= 4 * k):
        return None
    blocks = x.reshape(-1, V // BLOCK, BLOCK)
    bmax = blocks.amax(dim=-1)
    if bool(torch.isnan(bmax).any()):  # amax propagates NaN, so a NaN anywhere shows here
        return None
    return blocks, bmax


def argmax(x: torch.Tensor) -> torch.Tensor:
    """``x [..., V]`` → ``[...]`` long: the index of the first maximum along the last dimension,
    as ``x.argmax(dim=-1)``."""
    found = _block_maxima(x)
    if found is None:
        return x.argmax(dim=-1)
    blocks, bmax = found                                             # [R, V/BLOCK, BLOCK], [R, V/BLOCK]
    top = bmax.amax(dim=-1, keepdim=True)                            # [R, 1]
    first = (bmax == top).to(torch.uint8).argmax(dim=-1)             # [R]: first block holding the max
    rows = torch.arange(blocks.shape[0])
    inner = blocks[rows, first].argmax(dim=-1)                       # [R]: its first maximum
    return (first * BLOCK + inner).reshape(x.shape[:-1])


def topk(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``x [..., V]`` → (values, indices), each ``[..., k]``: the ``k`` largest entries along the
    last dimension, largest first, as ``torch.topk(x, k, dim=-1)`` (indices of tied values may
    differ)."""
    found = _block_maxima(x, k)
    if found is None:
        top = torch.topk(x, k, dim=-1)
        return top.values, top.indices
    blocks, bmax = found                                             # [R, V/BLOCK, BLOCK], [R, V/BLOCK]
    chosen = bmax.topk(k, dim=-1).indices                            # [R, k]: blocks with the largest maxima
    rows = torch.arange(blocks.shape[0])[:, None]
    cand = blocks[rows, chosen].reshape(-1, k * BLOCK)               # [R, k * BLOCK]
    values, at = cand.topk(k, dim=-1)                                # [R, k]
    index = chosen.gather(1, at // BLOCK) * BLOCK + at % BLOCK       # [R, k]: back to vocabulary ids
    lead = x.shape[:-1]
    return values.reshape(*lead, k), index.reshape(*lead, k)
