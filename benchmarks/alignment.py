"""Reward-guided decoding on the embedded model: plain sampling vs ARGS vs Transfer Q*.

Every method samples (same temperature, same seeds) from SmolLM2-135M-Instruct over a fixed set
of prompts; the reward is keyword coverage of a set of upbeat words and phrases (the ``keywords`` reward of
decodekit-qstar, in [0, 1]). Reported per method:

* mean reward over prompts × seeds;
* diversity = Π_{n=2..4} (1 − rep-n / 100), rep-n = 100 · (1 − unique n-grams / n-grams) of each
  completion's tokens, averaged over completions;
* tokens/s (new tokens / wall time of the batched ``generate`` calls).

A fourth row, plain sampling restricted to the model's top-k, is what qstar samples from at
α = 0: it separates the effect of the reward from the effect of the top-k restriction. With
coverage of 8 keywords, one keyword is worth 1/8, so α = w = 16 adds 2 to its logit.

Target (issue 7): TQ* reward above ARGS and above plain, diversity no worse than 10% below plain.

    python benchmarks/alignment.py                      # defaults: 6 prompts, 2 seeds, 32 tokens
    python benchmarks/alignment.py --prompts 2 --seeds 1 --new-tokens 12   # a quick check
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine, write_result  # noqa: E402

PROMPTS = [
    "Describe your ideal weekend.",
    "Write a short note to a neighbour.",
    "Tell me about your favourite place.",
    "What did you do last summer?",
    "Describe a walk in the park.",
    "Write two sentences about a birthday party.",
    "Tell me about a good book.",
    "Describe your morning routine.",
]
# Single-token words and multi-token phrases: ARGS sees a phrase's reward only at its last token,
# Transfer Q*'s rollouts see it coming.
KEYWORDS = ["happy", "fun", "friends", "family", "love", "wonderful", "thank you", "have a great day"]


def diversity(token_lists: list[list[int]]) -> float:
    """Mean over completions of Π_{n=2..4} (1 − rep-n/100)."""
    scores = []
    for toks in token_lists:
        d = 1.0
        for n in (2, 3, 4):
            grams = [tuple(toks[i:i + n]) for i in range(len(toks) - n + 1)]
            rep = 100.0 * (1 - len(set(grams)) / len(grams)) if grams else 0.0
            d *= 1 - rep / 100
        scores.append(d)
    return statistics.fmean(scores)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prompts", type=int, default=6, help=f"how many of the {len(PROMPTS)} fixed prompts")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--temperature", type=float, default=0.8)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--rollouts", type=int, default=2)
    ap.add_argument("--rollout-len", type=int, default=6)
    ap.add_argument("--every", type=int, default=1)
    ap.add_argument("--alpha", type=float, default=16.0, help="TQ*'s α and ARGS's w (same scale)")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--no-write", action="store_true", help="print only; do not write docs/results")
    args = ap.parse_args()

    from decodekit import Pipeline
    from decodekit.plugins import get_registry

    reward_spec = {"name": "keywords", "keywords": KEYWORDS}
    info = get_registry().get_reward("keywords")
    score = info.factory(info.options(keywords=KEYWORDS), None)
    prompts = PROMPTS[: args.prompts]
    common = {"k": args.k, "reward": reward_spec, "every": args.every}
    methods = {
        "plain sampling": [],
        f"plain top-k sampling (k={args.k}; = α 0)": "top_k",
        f"ARGS (w={args.alpha:g})": [{"name": "qstar", "mode": "args", "w": args.alpha, **common}],
        f"TQ* (α={args.alpha:g}, R={args.rollouts}, H={args.rollout_len})": [{
            "name": "qstar", "mode": "transfer_q", "alpha": args.alpha, "num_rollouts": args.rollouts,
            "rollout_len": args.rollout_len, "baseline": "self", **common}],
    }
    decoding = {"strategy": "sample", "temperature": args.temperature, "max_new_tokens": args.new_tokens}

    rows = []
    samples: dict[str, str] = {}
    for name, plugins in methods.items():
        if plugins == "top_k":  # what qstar with α = 0 samples from: the top-k of the model alone
            pipe = Pipeline(args.model, decoding={**decoding, "top_k": args.k})
        else:
            pipe = Pipeline(args.model, decoding=decoding, plugins=plugins)
        rewards, tokens, wall, n_new = [], [], 0.0, 0
        for seed in range(args.seeds):
            t0 = time.perf_counter()
            res = pipe.generate(prompts, seed=seed)
            wall += time.perf_counter() - t0
            n_new += res.stats.new_tokens
            rewards += score(res.texts)
            tokens += [c.token_ids for c in res.completions]
            samples.setdefault(name, res.texts[0])
        rows.append((name, statistics.fmean(rewards), diversity(tokens), n_new / wall, n_new, wall))
        print(f"{name}: reward {rows[-1][1]:.3f}, diversity {rows[-1][2]:.3f}, {rows[-1][3]:.2f} tok/s",
              file=sys.stderr)

    plain_r, plain_d = rows[0][1], rows[0][2]
    args_r, tq_r, tq_d = rows[2][1], rows[3][1], rows[3][2]
    lines = [
        "# Alignment at decoding time: plain sampling vs ARGS vs Transfer Q*",
        "",
        f"Model `{args.model}`, {len(prompts)} prompts × {args.seeds} seeds, {args.new_tokens} new tokens, "
        f"sampling at T={args.temperature:g}; reward: keyword coverage of {KEYWORDS} (in [0, 1]); "
        f"k={args.k}, every={args.every}; TQ* baseline ρ_BL = the model itself (direct transfer).",
        "",
        f"Machine: {machine()}.",
        "",
        "| method | mean reward | diversity | tokens/s | new tokens | wall s |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, r, d, tps, n, w in rows:
        lines.append(f"| {name} | {r:.3f} | {d:.3f} | {tps:.2f} | {n} | {w:.1f} |")
    lines += [
        "",
        f"Targets: TQ* reward above ARGS ({'met' if tq_r > args_r else 'NOT met'}) and above plain "
        f"({'met' if tq_r > plain_r else 'NOT met'}); TQ* diversity ≥ 0.9 × plain "
        f"({'met' if tq_d >= 0.9 * plain_d else 'NOT met'}: {tq_d:.3f} vs {0.9 * plain_d:.3f}).",
        "",
        "First completion of each method (seed 0):",
        "",
    ]
    for name, text in samples.items():
        lines.append(f"* {name}: {text!r}")
    n_done = len(prompts) * args.seeds
    lines += [
        "",
        f"Notes: {n_done} completions per method, so the rewards are small-sample means (more `--seeds` "
        f"tightens them). Transfer Q* pays k·R·H = {args.k * args.rollouts * args.rollout_len} rollout "
        "tokens per generated token, run as one batched generation per step over the shared prefix; "
        "ARGS pays k reward calls per token. The top-k row is qstar at α = 0: the gap between it and "
        "ARGS / TQ* is the effect of the reward, not of the top-k restriction.",
        "",
        "Command: `" + " ".join(["python benchmarks/alignment.py", *sys.argv[1:]]) + "`",
        "",
    ]
    md = "\n".join(lines)
    print(md)
    if not args.no_write:
        print(f"wrote {write_result('alignment', md)}", file=sys.stderr)


if __name__ == "__main__":
    main()
