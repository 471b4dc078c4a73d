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

Which kernel is faster for one or two rows depends on the CPU: oneDNN's on the AMD EPYC the
first figures came from, torch's own (MKL) by ~10 % a whole pass on an Intel Xeon with AVX-512,
where oneDNN's fixed cost per call outweighs the small products. :func:`pack_linears` therefore
times both for each distinct weight shape at 1-3 rows, once, and a :class:`PackedLinear` runs
``F.linear`` up to the row count where torch's kernel was clearly faster (``TORCH_MARGIN``), so
``onednn`` is never slower than ``default`` for plain steps. The choice is fixed when the model
is packed; the margin makes it unlikely to differ between runs on the same machine (where it
does, greedy tokens can differ only in near-ties, as between the two kernels).

bfloat16 models are packed the same way. On a CPU with AMX (Intel Xeon since Sapphire Rapids)
oneDNN then multiplies in bfloat16 tiles: a pass over 1 to 16 new tokens costs little more than
one over a single token (docs/results/cpu_kernels.md), and every row of a product is bitwise the
same whatever the number of rows up to 32 (:func:`choose_invariant_rows` checks it and splits
longer inputs), which together with :mod:`decodekit.invariant_attention` keeps speculative
decoding exact in bfloat16.

A prefill (a forward with nothing cached yet) is the exception: it is the one pass every
decoding of a prompt makes the same way, so its rows need no invariance, only the products a
single-row prefill of the prompt makes. A bfloat16 packed model computes each row's prompt
(after its left padding, in a batch) in one product over the prompt's tokens, unsplit: on the
embedded model, one core, a 130-token prefill then takes 83 ms instead of 133 (a split product
streams every weight once per 32 rows; docs/results/cpu_kernels.md). :func:`pack_linears` installs the hooks that mark a prefill on
the model (:func:`prompt_starts`); decodekit's speculative plugin drafts nothing on the prefill
of such models, so a verify pass never shares it.
"""

from __future__ import annotations

import contextvars
import copy
import statistics
import time
from typing import Any

import torch

from decodekit.errors import ConfigError

PACK_FOR_ROWS = 4  # the M oneDNN lays the weights out for; measured best for 1..16 new tokens
SMALL_ROWS = (1, 2, 3)  # row counts at which torch's own kernel may beat oneDNN's (timed when packing)
TORCH_MARGIN = 0.9      # torch's kernel is chosen for a row count only below 90 % of oneDNN's time
CHOICE_REPS = 9         # timings of each kernel per (shape, rows), interleaved; their medians decide
INVARIANT_LIMIT = 32    # bfloat16: the most rows per call checked for row invariance (choose_invariant_rows)


def available() -> bool:
    """Whether this torch build has oneDNN's packed fp32 linear (CPU builds with MKL-DNN)."""
    ops = getattr(torch.ops, "mkldnn", None)
    return bool(torch.backends.mkldnn.is_available() and ops is not None
                and hasattr(ops, "_reorder_linear_weight") and hasattr(ops, "_linear_pointwise"))


def bf16_available() -> bool:
    """Whether oneDNN has native bfloat16 kernels on this CPU (AVX-512 BF16 or AMX)."""
    return available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


# While a bfloat16 packed model runs a prefill: where each row's prompt starts (its left padding);
# set and reset around the model's forward by _enter_prefill / _leave_prefill
_prompt_starts: contextvars.ContextVar[list[int] | None] = contextvars.ContextVar("decodekit_prompt_starts",
                                                                                  default=None)


class PackedLinear(torch.nn.Module):
    """``y = x W^T + b`` through oneDNN with ``W`` packed once. ``x``: ``[..., in]`` → ``[..., out]``,
    in the weight's dtype (float32 or bfloat16)."""

    def __init__(self, linear: torch.nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = linear.weight  # kept: shapes, tied embeddings, readers of .weight
        self.bias = linear.bias
        with torch.no_grad():
            self.packed = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), PACK_FOR_ROWS)
        self.torch_rows = 0  # up to this many rows F.linear runs instead (set by pack_linears' timing)
        self.max_rows = 0    # > 0: more rows are split into calls of this many (bfloat16, choose_invariant_rows)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        starts = _prompt_starts.get()
        if (starts is not None and self.max_rows and x.dim() == 3 and x.shape[0] == len(starts)
                and x.shape[1] > self.max_rows):
            return self._prompts(x, starts)
        flat = x.reshape(-1, self.in_features)  # [M, in]
        if 0 < self.max_rows < flat.shape[0]:
            y = torch.cat([self._rows(part) for part in flat.split(self.max_rows)])
        else:
            y = self._rows(flat)
        return y.reshape(*x.shape[:-1], self.out_features)

    def _prompts(self, x: torch.Tensor, starts: list[int]) -> torch.Tensor:
        """A prefill's ``x [B, S, in] -> [B, S, out]``: row ``b``'s tokens from ``starts[b]`` on in one
        product, the product a single-row prefill of that prompt makes; padding positions get zeros."""
        if starts == [0]:
            return self._rows(x[0])[None]
        y = x.new_zeros(*x.shape[:2], self.out_features)
        for b, start in enumerate(starts):
            if start < x.shape[1]:
                y[b, start:] = self._rows(x[b, start:])
        return y

    def _rows(self, flat: torch.Tensor) -> torch.Tensor:
        """``[M, in] -> [M, out]`` through the kernel chosen for ``M`` rows."""
        if flat.shape[0] <= self.torch_rows:
            return torch.nn.functional.linear(flat, self.weight, self.bias)
        return torch.ops.mkldnn._linear_pointwise(flat, self.packed, self.bias, "none", [], "")

    def __deepcopy__(self, memo: dict) -> "PackedLinear":
        """oneDNN's packed tensor has no storage to copy: pack the copied weight again."""
        linear = torch.nn.Linear(self.in_features, self.out_features, bias=self.bias is not None)
        linear.weight = copy.deepcopy(self.weight, memo)  # memo keeps tied weights tied
        linear.bias = copy.deepcopy(self.bias, memo)
        new = PackedLinear(linear)
        new.torch_rows, new.max_rows = self.torch_rows, self.max_rows
        memo[id(self)] = new
        return new

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, onednn packed"
                f"{f', torch kernel up to {self.torch_rows} rows' if self.torch_rows else ''}")


def pack_linears(model: torch.nn.Module, measure: bool = True) -> int:
    """Replace every ``nn.Linear`` of ``model`` by a :class:`PackedLinear`, in place; returns how many.

    ``measure``: time both kernels at 1-3 rows per weight shape (:func:`choose_small_row_kernels`,
    about a second on the embedded model); without it every product runs through oneDNN.

    Raises :class:`ConfigError` unless the model is on the CPU in float32 (or bfloat16, on a CPU
    with native bfloat16) and torch has oneDNN.
    """
    param = next(model.parameters())
    if param.device.type != "cpu" or param.dtype not in (torch.float32, torch.bfloat16):
        raise ConfigError(f"cpu_kernels: onednn needs a float32 or bfloat16 model on the CPU; this one is "
                          f"{str(param.dtype).removeprefix('torch.')} on {param.device}")
    if not available():
        raise ConfigError("cpu_kernels: onednn needs a torch build with oneDNN (MKL-DNN); this one has "
                          "none: use cpu_kernels: default")
    if param.dtype == torch.bfloat16 and not bf16_available():
        raise ConfigError("cpu_kernels: onednn in bfloat16 needs a CPU with native bfloat16 (AVX-512 BF16 or "
                          "AMX); this one has none: use dtype: float32")
    packed = []
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is torch.nn.Linear:
                packed.append(PackedLinear(child))
                setattr(parent, name, packed[-1])
    if measure:
        choose_small_row_kernels(packed)
    if param.dtype == torch.bfloat16:
        choose_invariant_rows(packed)
        if not getattr(model, "_decodekit_prefill_hooks", False):  # see the module's docstring
            model.register_forward_pre_hook(_enter_prefill, with_kwargs=True)
            model.register_forward_hook(_leave_prefill, always_call=True)
            model._decodekit_prefill_hooks = True
    return len(packed)


def prompt_starts(kwargs: dict[str, Any]) -> list[int] | None:
    """For a causal LM's forward ``kwargs``: where each row's prompt starts if the call is a prefill
    of left-padded prompts (nothing cached, more than one token per row), else None."""
    cache = kwargs.get("cache", kwargs.get("past_key_values"))
    if cache is not None and (not hasattr(cache, "get_seq_length") or cache.get_seq_length() > 0):
        return None
    tokens = kwargs.get("input_ids")
    tokens = tokens if tokens is not None else kwargs.get("inputs_embeds")
    if tokens is None or tokens.dim() < 2 or tokens.shape[1] < 2:
        return None
    B, S = tokens.shape[:2]
    mask = kwargs.get("attention_mask")
    if mask is None:
        return [0] * B
    if mask.dim() != 2 or tuple(mask.shape) != (B, S):
        return None  # a 4-D or tree mask: not a plain prefill
    valid = mask.bool().cpu()                                    # [B, S]
    starts = S - valid.sum(-1)                                   # [B]: padding before each prompt
    if not bool((valid == (torch.arange(S) >= starts[:, None])).all()):
        return None  # holes, or padding on the right
    return starts.tolist()


def _enter_prefill(model: torch.nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
    """Forward pre-hook: tell the model's packed linears whether this call is a prefill and
    where its prompts start (PackedLinear.forward); :func:`_leave_prefill` undoes it."""
    if args:  # input_ids given by position
        kwargs = {"input_ids": args[0], **kwargs}
    token = _prompt_starts.set(prompt_starts(kwargs))
    model.__dict__.setdefault("_decodekit_prefill_tokens", []).append(token)


def _leave_prefill(model: torch.nn.Module, args: tuple, output: Any) -> None:
    tokens = model.__dict__.get("_decodekit_prefill_tokens")
    if tokens:
        _prompt_starts.reset(tokens.pop())


def _by_shape(linears: list[PackedLinear]) -> dict[tuple[int, int], list[PackedLinear]]:
    """The layers grouped by weight shape ``(out, in)``: kernel choices are made once per shape."""
    groups: dict[tuple[int, int], list[PackedLinear]] = {}
    for layer in linears:
        groups.setdefault((layer.out_features, layer.in_features), []).append(layer)
    return groups


@torch.inference_mode()
def choose_small_row_kernels(linears: list[PackedLinear], reps: int = CHOICE_REPS) -> dict[tuple[int, int], int]:
    """Set each layer's ``torch_rows``: for every distinct ``(out, in)`` shape, the largest row
    count in ``SMALL_ROWS`` up to which ``F.linear`` took under ``TORCH_MARGIN`` of oneDNN's time
    (medians of ``reps`` interleaved timings on one layer of that shape). Returns it by shape."""
    chosen = {}
    for shape, layers in _by_shape(linears).items():
        probe, rows = layers[0], 0
        for m in SMALL_ROWS:
            x = torch.randn(m, probe.in_features, dtype=probe.weight.dtype)
            times: dict[bool, list[float]] = {False: [], True: []}
            for _ in range(reps + 1):  # the first round warms both up and is dropped below
                for use_torch in (False, True):
                    probe.torch_rows = m if use_torch else 0
                    t0 = time.perf_counter()
                    probe(x)
                    times[use_torch].append(time.perf_counter() - t0)
            if statistics.median(times[True][1:]) < TORCH_MARGIN * statistics.median(times[False][1:]):
                rows = m
            else:
                break
        for layer in layers:
            layer.torch_rows = rows
        chosen[shape] = rows
    return chosen


@torch.inference_mode()
def choose_invariant_rows(linears: list[PackedLinear], limit: int = INVARIANT_LIMIT) -> dict[tuple[int, int], int]:
    """Set each layer's ``max_rows`` (bfloat16): for every distinct ``(out, in)`` shape, the largest
    ``m <= limit`` such that each row of a call over ``2 .. m`` rows is bitwise the row of a
    one-row call, checked on random inputs. Longer inputs are then split into calls of that many
    rows, so a row's result never depends on how many rows share its pass (oneDNN switches to
    other kernels for larger products: 33 rows and up on an AMX Xeon). Returns it by shape."""
    chosen = {}
    gen = torch.Generator().manual_seed(0)
    for shape, layers in _by_shape(linears).items():
        probe = layers[0]
        probe.max_rows = 0
        x = torch.randn(limit, probe.in_features, generator=gen).to(probe.weight.dtype)  # [limit, in]
        alone = torch.cat([probe(x[i:i + 1]) for i in range(limit)])                     # [limit, out]
        rows = next((m - 1 for m in range(2, limit + 1) if not torch.equal(probe(x[:m]), alone[:m])), limit)
        for layer in layers:
            layer.max_rows = rows
        chosen[shape] = rows
    return chosen
