"""oneDNN linear layers with pre-packed weights: cheap multi-token passes on a CPU.

A decoding step on a CPU is a pile of matrix products ``[M, in] @ [in, out]`` with a small ``M``
(the new tokens of the step). torch's default fp32 path (MKL ``sgemm``) is tuned for large
``M``: on the embedded model's LM head (49152 x 576) one core takes ~13 ms for ``M = 1`` and
~25-38 ms for ``M = 2`` or ``3``, more than for ``M = 4``; a whole target pass over 8 new tokens
costs ~1.7 plain passes. oneDNN, given weights re-laid out once for its kernels
(``torch.ops.mkldnn._reorder_linear_weight``), streams them at close to memory speed for every
small ``M``: a pass over 8 new tokens then costs ~1.1 plain passes and a plain pass is itself a
little faster (docs/benchmarks.md, "CPU kernels"). Speculative decoding is what gains most: its
verify passes are exactly such small-``M`` products.

:func:`pack_linears` swaps every ``nn.Linear`` of a CPU float32 model for a
:class:`PackedLinear` in place. The original weight stays on the module (``.weight``: shapes,
tied embeddings and code that reads it keep working); the packed copy is what ``forward`` uses.
Results equal ``F.linear``'s up to float rounding (a different summation order), so greedy
tokens can differ from an unpacked model's where two logits are within ~1e-4 of each other.
Opt in with ``Pipeline(..., cpu_kernels="onednn")`` or ``cpu_kernels: onednn`` in a pipeline
file.
"""

from __future__ import annotations

import copy

import torch

from decodekit.errors import ConfigError

PACK_FOR_ROWS = 4  # the M oneDNN lays the weights out for; measured best for 1..16 new tokens


def available() -> bool:
    """Whether this torch build has oneDNN's packed fp32 linear (CPU builds with MKL-DNN)."""
    ops = getattr(torch.ops, "mkldnn", None)
    return bool(torch.backends.mkldnn.is_available() and ops is not None
                and hasattr(ops, "_reorder_linear_weight") and hasattr(ops, "_linear_pointwise"))


class PackedLinear(torch.nn.Module):
    """``y = x W^T + b`` through oneDNN with ``W`` packed once. ``x``: ``[..., in]`` → ``[..., out]``."""

    def __init__(self, linear: torch.nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = linear.weight  # kept: shapes, tied embeddings, readers of .weight
        self.bias = linear.bias
        with torch.no_grad():
            self.packed = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), PACK_FOR_ROWS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)  # [M, in]
        y = torch.ops.mkldnn._linear_pointwise(flat, self.packed, self.bias, "none", [], "")  # [M, out]
        return y.reshape(*x.shape[:-1], self.out_features)

    def __deepcopy__(self, memo: dict) -> "PackedLinear":
        """oneDNN's packed tensor has no storage to copy: pack the copied weight again."""
        linear = torch.nn.Linear(self.in_features, self.out_features, bias=self.bias is not None)
        linear.weight = copy.deepcopy(self.weight, memo)  # memo keeps tied weights tied
        linear.bias = copy.deepcopy(self.bias, memo)
        new = PackedLinear(linear)
        memo[id(self)] = new
        return new

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, onednn packed"


def pack_linears(model: torch.nn.Module) -> int:
    """Replace every ``nn.Linear`` of ``model`` by a :class:`PackedLinear`, in place; returns how many.

    Raises :class:`ConfigError` unless the model is on the CPU in float32 and torch has oneDNN.
    """
    param = next(model.parameters())
    if param.device.type != "cpu" or param.dtype != torch.float32:
        raise ConfigError(f"cpu_kernels: onednn needs a float32 model on the CPU; this one is "
                          f"{str(param.dtype).removeprefix('torch.')} on {param.device}")
    if not available():
        raise ConfigError("cpu_kernels: onednn needs a torch build with oneDNN (MKL-DNN); this one has "
                          "none: use cpu_kernels: default")
    count = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is torch.nn.Linear:
                setattr(parent, name, PackedLinear(child))
                count += 1
    return count
