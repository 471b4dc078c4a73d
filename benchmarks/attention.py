"""A verify-shaped pass with transformers' sdpa attention and with decodekit_sdpa (decodekit/attention.py).

A pass over ``s > 1`` new tokens after a cache carries an explicit causal mask, and transformers'
``sdpa`` then repeats every key/value head for its group of query heads, in every layer, before
attention; ``decodekit_sdpa`` lets torch's kernel read the shared heads in place. This times, on
the embedded model after ``--context`` cached tokens, a pass over ``s`` new tokens with each
implementation, side by side (interleaved, median of ``--reps``), checks that the logits are
bitwise equal, and writes docs/results/attention.md (``attention[_onednn][_<N>threads].md``).

    python benchmarks/attention.py [--reps 15] [--context 200] [--cpu-kernels onednn] [--threads 1]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import add_cpu_args, cpu_variant, machine, median, write_result  # noqa: E402
from cpu_kernels import timed_pass  # noqa: E402

from decodekit.attention import NAME  # noqa: E402
from decodekit.models import load  # noqa: E402

WIDTHS = (1, 2, 4, 8, 16, 32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--context", type=int, default=200, help="cached tokens before the timed pass")
    add_cpu_args(ap, "attention")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model, _ = load("smollm2-135m", "cpu", "float32", args.cpu_kernels)
    if model.config._attn_implementation != NAME:
        raise SystemExit(f"the model uses {model.config._attn_implementation!r}, not {NAME!r}: nothing to compare")
    gen = torch.Generator().manual_seed(0)
    context = torch.randint(100, 20000, (1, args.context), generator=gen)
    impls = ("sdpa", NAME)
    rows = []
    for s in WIDTHS:
        new = torch.randint(100, 20000, (1, s), generator=gen)
        times: dict[str, list[float]] = {i: [] for i in impls}
        logits: dict[str, torch.Tensor] = {}
        for _ in range(args.reps):
            for impl in impls:
                model.set_attn_implementation(impl)
                ms, logits[impl] = timed_pass(model, context, new)
                times[impl].append(ms)
        model.set_attn_implementation(NAME)
        same = torch.equal(logits["sdpa"], logits[NAME])
        a, b = median(times["sdpa"]), median(times[NAME])
        rows.append((s, a, b, same))
        print(f"s={s}: sdpa {a:.1f} ms, {NAME} {b:.1f} ms, bitwise equal: {same}", flush=True)

    lines = [
        "# Attention in a verify-shaped pass: sdpa against decodekit_sdpa",
        "",
        f"Machine: {machine()}.",
        "",
        f"`python benchmarks/attention.py --reps {args.reps} --context {args.context} --cpu-kernels "
        f"{args.cpu_kernels} --threads {args.threads}`: SmolLM2-135M-Instruct in float32 (9 query heads "
        f"share 3 key/value heads). One forward pass over *s* new tokens after {args.context} cached ones, "
        "logits at every new position (as a verify pass keeps them), median of the reps, the two "
        "implementations interleaved. With *s* > 1 the pass carries a causal mask, and transformers' "
        "`sdpa` copies each key/value head for its three query heads in every layer first; "
        "`decodekit_sdpa` (decodekit/attention.py) lets torch's kernel read them in place. With *s* = 1 "
        "both take transformers' own path.",
        "",
        "| new tokens *s* | sdpa (ms) | decodekit_sdpa (ms) | saved | logits bitwise equal |",
        "| ---: | ---: | ---: | ---: | :---: |",
    ]
    for s, a, b, same in rows:
        lines.append(f"| {s} | {a:.1f} | {b:.1f} | {(a - b) / a:+.0%} | {'yes' if same else 'NO'} |")
    name = cpu_variant("attention", args.cpu_kernels, torch.device("cpu"))
    print(write_result(name, "\n".join(lines) + "\n"))


if __name__ == "__main__":
    main()
