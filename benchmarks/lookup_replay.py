"""Prompt lookup's drafts replayed against greedy outputs: tokens per pass, free of timing noise.

Generates plain greedy outputs of SmolLM2-135M-Instruct for the prompt sets of
``benchmarks/speculative.py``, then replays prompt lookup over each output as speculative
decoding would: at every step the lookup drafts up to ``L`` tokens from the committed text (prompt
and output so far), the greedy verifier accepts the longest prefix that equals the output, and the
step commits that prefix plus one token. The replay counts target passes only, so it is
deterministic and the same on every machine; it compares lookup variants (with and without
resuming a copy after an edit, lookup.py) at fixed draft lengths, without the planner. Writes
docs/results/lookup_replay.md.

    python benchmarks/lookup_replay.py [--new-tokens 96] [--lengths 5,8,16]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_result  # noqa: E402
from speculative import SETS  # noqa: E402

from decodekit import Pipeline  # noqa: E402
from decodekit_speculative import Speculative, SpeculativeOptions, lookup  # noqa: E402

DEFAULTS = SpeculativeOptions()  # the plugin's own n-gram bounds


def replay(prompt: list[int], output: list[int], length: int, starts) -> int:
    """Target passes that greedy speculative decoding with ``length``-token lookup drafts needs to
    commit ``output`` after ``prompt`` (``starts``: word starts to resume with, or None)."""
    text, offset, passes, done = list(prompt), None, 0, 0
    while done < len(output):
        found = lookup.lookup_draft(text, DEFAULTS.ngram_min, DEFAULTS.ngram_max, length, offset, starts)
        offset = found.offset
        k = 0  # accepted draft tokens: the longest prefix of the draft that the output continues with
        while k < len(found.tokens) and done + k < len(output) and found.tokens[k] == output[done + k]:
            k += 1
        step = output[done:done + k + 1]  # the accepted tokens and the target's own next one
        text += step
        done += len(step)
        passes += 1
    return passes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--new-tokens", type=int, default=96)
    ap.add_argument("--lengths", default="5,8,16", help="draft lengths to replay")
    args = ap.parse_args()
    lengths = [int(x) for x in args.lengths.split(",")]

    pipe = Pipeline("smollm2-135m", decoding={"strategy": "greedy", "max_new_tokens": args.new_tokens})
    starts = Speculative(DEFAULTS, pipe).word_starts  # the word starts the plugin resumes at
    variants = {"lookup": None, "lookup + resume": starts}
    rows = []
    for set_name, prompts in SETS.items():
        pairs = []
        for text in prompts:
            ids = pipe.encode(text)
            pairs.append((ids, pipe.generate(ids).token_ids))
        n_tok = sum(len(out) for _, out in pairs)
        for length in lengths:
            per = {v: sum(replay(p, out, length, s) for p, out in pairs) for v, s in variants.items()}
            rows.append((set_name, length, n_tok, per))
            print(set_name, length, {v: round(n_tok / n, 2) for v, n in per.items()}, flush=True)

    lines = [
        "# Prompt lookup replayed against greedy outputs",
        "",
        f"`python benchmarks/lookup_replay.py --new-tokens {args.new_tokens} --lengths {args.lengths}`: plain "
        "greedy outputs of SmolLM2-135M-Instruct for the prompt sets of benchmarks/speculative.py (3 prompts "
        f"each, up to {args.new_tokens} new tokens), then prompt lookup replayed over them with drafts of a "
        "fixed length *L* (no planner) and a greedy verifier. Tokens per target pass, with and without "
        "resuming a copy after an edit (lookup.py). A count of passes, not a timing: the same on every "
        "machine. What a pass over *L + 1* tokens costs, and so which *L* pays, is in cpu_kernels.md.",
        "",
        "| prompt set | draft length L | new tokens | " + " | ".join(f"{v} (tok/pass)" for v in variants) + " |",
        "| --- | ---: | ---: | " + " | ".join("---:" for _ in variants) + " |",
    ]
    for set_name, length, n_tok, per in rows:
        lines.append(f"| {set_name} | {length} | {n_tok} | " + " | ".join(f"{n_tok / per[v]:.2f}" for v in variants) + " |")
    out = write_result("lookup_replay", "\n".join(lines) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
