"""Prompt lookup's drafts replayed against greedy outputs: tokens per pass, and the best any planner could do.

Generates plain greedy outputs of SmolLM2-135M-Instruct for the prompt sets of
``benchmarks/speculative.py``, then replays prompt lookup over each output as speculative
decoding would: at every step the lookup drafts up to ``L`` tokens from the committed text (prompt
and output so far), the greedy verifier accepts the longest prefix that equals the output, and the
step commits that prefix plus one token. The replay counts target passes, so it is deterministic
and the same on every machine; it compares lookup variants (with and without resuming a copy
after an edit, lookup.py) at fixed draft lengths, without the planner.

The second table is a *hindsight bound*. A planner that knew in advance how many of the lookup's
draft tokens the target will accept would draft exactly those (up to ``L``): the same passes as
the replay, each as narrow as it can be. Costing those passes with this machine's measured pass
times (a pass over ``s`` new tokens after ``--context`` cached ones, as in cpu_kernels.py) and each
prompt's measured prefill gives the largest speed-up over plain greedy that prompt lookup's drafts
allow here, whatever the planner does. It leaves out the host's own work per step (proposing,
verifying), so real runs stay below it. Writes docs/results/lookup_replay.md.

    python benchmarks/lookup_replay.py [--new-tokens 96] [--lengths 5,8,16] [--cpu-kernels onednn] [--threads 1]
        [--dtype bfloat16]   (writes docs/results/lookup_replay_bf16.md)
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, write_result  # noqa: E402
from cpu_kernels import pass_ms, prefill_ms  # noqa: E402
from speculative import SETS  # noqa: E402

from decodekit import Pipeline  # noqa: E402
from decodekit_speculative import Speculative, SpeculativeOptions, lookup  # noqa: E402

DEFAULTS = SpeculativeOptions()  # the plugin's own n-gram bounds
WIDTHS = (1, 2, 3, 4, 5, 6, 8, 10, 12, 16, 20, 24, 32, 48, 64)  # pass widths timed for the bound


def replay(prompt: list[int], output: list[int], length: int, starts) -> list[int]:
    """The draft tokens accepted at each target pass when greedy speculative decoding with
    ``length``-token lookup drafts commits ``output`` after ``prompt`` (``starts``: word starts to
    resume with, or None). Its length is the number of passes."""
    text, offset, accepted, done = list(prompt), None, [], 0
    while done < len(output):
        found = lookup.lookup_draft(text, DEFAULTS.ngram_min, DEFAULTS.ngram_max, length, offset, starts)
        offset = found.offset
        k = 0  # accepted draft tokens: the longest prefix of the draft that the output continues with
        while k < len(found.tokens) and done + k < len(output) and found.tokens[k] == output[done + k]:
            k += 1
        step = output[done:done + k + 1]  # the accepted tokens and the target's own next one
        text += step
        done += len(step)
        accepted.append(k)
    return accepted


def pass_costs(model, context_len: int, reps: int, widest: int) -> dict[int, float]:
    """Median milliseconds of one pass over ``s`` new tokens after ``context_len`` cached ones,
    for the timed widths up to ``widest`` (interleaved over ``reps`` rounds)."""
    widths = [s for s in WIDTHS if s <= widest] + ([widest] if widest not in WIDTHS else [])
    context = torch.randint(100, 20000, (1, context_len), generator=torch.Generator().manual_seed(0))
    pass_ms(model, context, 4)  # warm-up
    times: dict[int, list[float]] = {s: [] for s in widths}
    for _ in range(reps):
        for s in widths:
            times[s].append(pass_ms(model, context, s))
    return {s: statistics.median(v) for s, v in times.items()}


def cheapest_pass(costs: dict[int, float], s: int) -> float:
    """What a pass that must hold ``s`` new tokens costs at best: interpolated between the timed
    widths, or a wider timed pass if that is cheaper (pad the draft with tokens that will be rejected)."""
    xs = sorted(costs)
    lo, hi = max(x for x in xs if x <= s), min(x for x in xs if x >= s)
    at = costs[lo] if lo == hi else costs[lo] + (costs[hi] - costs[lo]) * (s - lo) / (hi - lo)
    return min([at] + [costs[x] for x in xs if x > s])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--new-tokens", type=int, default=96)
    ap.add_argument("--lengths", default="5,8,16", help="draft lengths to replay")
    ap.add_argument("--cpu-kernels", default="onednn", choices=["default", "onednn"],
                    help="the kernels the bound's passes are timed with")
    ap.add_argument("--threads", type=int, default=1, help="torch threads for the timings")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                    help="the model's dtype (bfloat16: its own greedy outputs and pass times; "
                         "writes lookup_replay_bf16.md)")
    ap.add_argument("--context", type=int, default=200, help="cached tokens before a timed pass")
    ap.add_argument("--reps", type=int, default=15, help="timings per pass width (median)")
    args = ap.parse_args()
    lengths = [int(x) for x in args.lengths.split(",")]
    torch.set_num_threads(args.threads)

    pipe = Pipeline("smollm2-135m", decoding={"strategy": "greedy", "max_new_tokens": args.new_tokens},
                    device="cpu", dtype=args.dtype, cpu_kernels=args.cpu_kernels)
    starts = Speculative(DEFAULTS, pipe).word_starts  # the word starts the plugin resumes at
    variants = {"lookup": None, "lookup + resume": starts}
    costs = pass_costs(pipe.model, args.context, args.reps, max(lengths) + 1)
    print("pass ms by width:", {s: round(c, 1) for s, c in costs.items()}, flush=True)
    rows, bounds = [], []
    for set_name, prompts in SETS.items():
        pairs, prefill = [], 0.0
        for text in prompts:
            ids = pipe.encode(text)
            pairs.append((ids, pipe.generate(ids).token_ids))
            prefill += prefill_ms(pipe.model, ids)
        n_tok = sum(len(out) for _, out in pairs)
        for length in lengths:
            accepted = {v: [k for p, out in pairs for k in replay(p, out, length, s)] for v, s in variants.items()}
            rows.append((set_name, length, n_tok, {v: len(ks) for v, ks in accepted.items()}))
            # hindsight: every pass drafts exactly the tokens it will accept (lookup + resume)
            decode_plain = n_tok * costs[1]
            decode_best = sum(cheapest_pass(costs, k + 1) for k in accepted["lookup + resume"])
            bounds.append((set_name, length, decode_plain / decode_best,
                           (prefill + decode_plain) / (prefill + decode_best), prefill / len(prompts)))
            print(set_name, length, {v: round(n_tok / len(ks), 2) for v, ks in accepted.items()},
                  f"bound {bounds[-1][3]:.2f}x overall, {bounds[-1][2]:.2f}x after prefill", flush=True)

    lines = [
        "# Prompt lookup replayed against greedy outputs",
        "",
        f"Machine: {machine()}.",
        "",
        f"`python benchmarks/lookup_replay.py --new-tokens {args.new_tokens} --lengths {args.lengths} "
        f"--cpu-kernels {args.cpu_kernels} --threads {args.threads}"
        + (" --dtype bfloat16" if args.dtype == "bfloat16" else "") + "`: plain greedy outputs of "
        f"SmolLM2-135M-Instruct in {args.dtype} for the prompt sets of benchmarks/speculative.py (3 prompts each, up to "
        f"{args.new_tokens} new tokens), then prompt lookup replayed over them with drafts of a fixed length "
        "*L* (no planner) and a greedy verifier. Tokens per target pass, with and without resuming a copy "
        "after an edit (lookup.py). A count of passes, not a timing: the same on every machine. What a pass "
        "over *L + 1* tokens costs, and so which *L* pays, is in cpu_kernels.md.",
        "",
        "| prompt set | draft length L | new tokens | " + " | ".join(f"{v} (tok/pass)" for v in variants) + " |",
        "| --- | ---: | ---: | " + " | ".join("---:" for _ in variants) + " |",
    ]
    for set_name, length, n_tok, passes in rows:
        lines.append(f"| {set_name} | {length} | {n_tok} | "
                     + " | ".join(f"{n_tok / passes[v]:.2f}" for v in variants) + " |")
    lines += [
        "",
        "**Hindsight bound.** A planner that knew how many of each draft's tokens the target will accept "
        "would draft exactly those, up to *L* (lookup + resume): the same passes as above, each as narrow "
        f"as it can be. Those passes are costed with this machine's pass times (`cpu_kernels: {args.cpu_kernels}`, "
        f"{args.threads} thread(s), after {args.context} cached tokens, median of {args.reps}; a narrower pass "
        "may be padded to a wider one that is cheaper) and each prompt's measured prefill. The result is "
        "the largest speed-up over plain greedy that prompt lookup's drafts allow on this machine, "
        "whatever the planner does; the host's own work per step is left out, so real runs stay below "
        "it (benchmarks/speculative.py measures them).",
        "",
        "Pass times (ms) by new tokens *s*: " + ", ".join(f"{s}: {c:.1f}" for s, c in costs.items()) + ".",
        "",
        "| prompt set | draft length L | prefill per prompt (ms) | bound after prefill | bound overall |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for set_name, length, after, overall, pre in bounds:
        lines.append(f"| {set_name} | {length} | {pre:.0f} | {after:.2f}x | {overall:.2f}x |")
    out = write_result("lookup_replay" + ("_bf16" if args.dtype == "bfloat16" else ""), "\n".join(lines) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
