"""Blocked argmax / top-k (decodekit/reductions.py) against torch's, on the embedded model's logits.

Every verify step takes an argmax at each position of the pass (1 for a plain step, 1 + N with
N draft nodes), and token recycling and ADED a top-k: over rows of V = 49152 logits here. This
times both ways side by side on the same rows (real logits: one target pass over a prompt),
interleaved, median of ``--reps``, checks that they agree (argmax: same indices; top-k: same
values), and writes docs/results/reductions.md (``..._<N>threads.md`` on N > 1 threads).

    python benchmarks/reductions.py [--reps 200] [--k 8] [--threads N]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import cpu_variant, machine, median, write_result  # noqa: E402

from decodekit import Pipeline, reductions  # noqa: E402

ROWS = (1, 5, 9, 17, 33)  # positions per pass: a plain step, chains and trees of 4 / 8 / 16 / 32 nodes
TEXT = ("The quick brown fox jumps over the lazy dog while the cat watches from the warm window sill, "
        "and the children count the birds that land on the old wooden fence behind the garden.")


def per_call_ms(fn, reps: int) -> float:
    fn()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t0) / reps * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=200, help="calls per timing; each figure is the median of 5 timings")
    ap.add_argument("--k", type=int, default=8, help="top-k width (token recycling's default)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    pipe = Pipeline("smollm2-135m", device="cpu")
    ids = torch.tensor([pipe.encode(TEXT)])
    with torch.inference_mode():
        logits = pipe.model(input_ids=ids).logits[0].float()  # [S, V]
    if logits.shape[0] < max(ROWS):
        raise SystemExit(f"the prompt gives {logits.shape[0]} positions; {max(ROWS)} are needed")

    ops = {
        "argmax": (lambda x: x.argmax(dim=-1), reductions.argmax),
        f"top-{args.k}": (lambda x: torch.topk(x, args.k, dim=-1).values,
                          lambda x: reductions.topk(x, args.k)[0]),
    }
    table = []
    for J in ROWS:
        x = logits[-J:].contiguous()  # [J, V]
        row = [J]
        for name, (plain, blocked) in ops.items():
            if not torch.equal(plain(x), blocked(x)):
                raise SystemExit(f"{name} over {J} rows: the blocked result differs from torch's")
            times = {"torch": [], "blocked": []}
            for _ in range(5):  # interleaved, so that drift of the machine hits both alike
                times["torch"].append(per_call_ms(lambda: plain(x), args.reps))
                times["blocked"].append(per_call_ms(lambda: blocked(x), args.reps))
            t, b = median(times["torch"]), median(times["blocked"])
            row += [t, b, t / b]
        table.append(row)
        print(" ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in row), flush=True)

    flags = f" --reps {args.reps} --k {args.k}" + (f" --threads {args.threads}" if args.threads else "")
    V = logits.shape[-1]
    lines = [
        "## Blocked argmax and top-k (CPU)",
        "",
        f"Machine: {machine()}.",
        "",
        f"`python benchmarks/reductions.py{flags}`: milliseconds per call over J rows of the embedded "
        f"model's logits (V = {V}, float32), torch's `argmax` / `topk` against decodekit/reductions.py "
        "(a vectorised max over blocks of 64 finds the block, or the k blocks, that hold the answer). "
        "Median of 5 interleaved timings; both give the same argmax indices and top-k values (checked). "
        "J = 1 is a plain step; J = 1 + N a verify pass over N draft nodes.",
        "",
        f"| rows J | torch argmax | blocked argmax | speed-up | torch top-{args.k} | blocked top-{args.k} | speed-up |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for J, ta, ba, ra, tk, bk, rk in table:
        lines.append(f"| {J} | {ta:.3f} | {ba:.3f} | {ra:.1f}x | {tk:.3f} | {bk:.3f} | {rk:.1f}x |")
    lines.append("")
    write_result(cpu_variant("reductions", "default", torch.device("cpu")), "\n".join(lines))


if __name__ == "__main__":
    main()
