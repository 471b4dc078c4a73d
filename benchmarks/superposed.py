"""Superposed decoding against nucleus sampling and beam search, k drafts per prompt.

On the embedded model, each method produces k drafts for every prompt:

* ``superposed`` (k drafts, one forward pass per step; n-gram filter counted from the prompt,
  alpha = 0.5, and alpha = 0: no n-gram filter),
* nucleus sampling (top_p = 0.9), k independent samples (seeds 0..k-1, one call each),
* beam search with k beams, all k returned.

Per prompt: seconds per draft (wall time / k), forward rows per draft (each pass counts its rows), distinct-2 (unique
bigrams / all bigrams over the k drafts), the number of different drafts, the mean per-token
log-likelihood log p(y)/|y| of the drafts and the best one (scored by the model, teacher forcing);
averaged over prompts. Writes docs/results/superposed.md.

    python benchmarks/superposed.py [--k 3] [--new-tokens 16] [--prompts 4]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, write_result  # noqa: E402

from decodekit import Pipeline  # noqa: E402

PROMPTS = [
    "Write a one-line poem about rain.",
    "Give me a name for a cat.",
    "Describe the sea in one sentence.",
    "What should I cook for dinner tonight?",
    "Complete the sentence: The best way to learn is",
    "Suggest a title for a story about a lost key.",
]


@torch.inference_mode()
def loglik(model, prompt: list[int], seq: list[int]) -> float:
    """Σ log p(seq | prompt) under the model (teacher forcing)."""
    ids = torch.tensor([prompt + seq], device=model.device)
    logp = torch.log_softmax(model(input_ids=ids).logits[0, len(prompt) - 1:-1].float(), dim=-1)  # [|seq|, V]
    return float(logp.gather(1, torch.tensor(seq, device=model.device)[:, None]).sum())


def distinct_2(seqs: list[list[int]]) -> float:
    grams = [tuple(s[i:i + 2]) for s in seqs for i in range(len(s) - 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def superposed(pipe: Pipeline, prompt: str, k: int, n: int, alpha: float) -> tuple[list[list[int]], int]:
    r = pipe.generate(prompt, strategy="superposed", num_drafts=k, alpha=alpha, max_new_tokens=n)
    return [s.token_ids for s in r.completions[0].sequences], r.stats.row_passes


def beam(pipe: Pipeline, prompt: str, k: int, n: int) -> tuple[list[list[int]], int]:
    r = pipe.generate(prompt, strategy="beam", num_beams=k, num_return_sequences=k, max_new_tokens=n)
    return [s.token_ids for s in r.completions[0].sequences], r.stats.row_passes


def nucleus(pipe: Pipeline, prompt: str, k: int, n: int) -> tuple[list[list[int]], int]:
    out, passes = [], 0
    for seed in range(k):
        r = pipe.generate(prompt, strategy="sample", top_p=0.9, seed=seed, max_new_tokens=n)
        out.append(r.token_ids)
        passes += r.stats.row_passes
    return out, passes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--k", type=int, default=3)
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--prompts", type=int, default=4)
    args = ap.parse_args()
    k, n = args.k, args.new_tokens
    pipe = Pipeline("smollm2-135m", decoding={"max_new_tokens": n})
    methods = [
        (f"superposed (k={k}, alpha=0.5, prompt n-grams)", lambda p: superposed(pipe, p, k, n, 0.5)),
        (f"superposed (k={k}, alpha=0, no n-gram filter)", lambda p: superposed(pipe, p, k, n, 0.0)),
        (f"nucleus top_p=0.9 ({k} samples)", lambda p: nucleus(pipe, p, k, n)),
        (f"beam search ({k} beams)", lambda p: beam(pipe, p, k, n)),
    ]
    prompts = PROMPTS[: args.prompts]
    rows = []
    for label, run in methods:
        acc = {"s": 0.0, "passes": 0.0, "d2": 0.0, "diff": 0.0, "mean": 0.0, "best": 0.0}
        for prompt in prompts:
            ids = pipe.encode(prompt)
            t0 = time.perf_counter()
            drafts, passes = run(prompt)
            acc["s"] += (time.perf_counter() - t0) / k
            acc["passes"] += passes / k
            per_tok = [loglik(pipe.model, ids, d) / len(d) for d in drafts if d]
            acc["d2"] += distinct_2(drafts)
            acc["diff"] += len({tuple(d) for d in drafts})
            acc["mean"] += sum(per_tok) / len(per_tok)
            acc["best"] += max(per_tok)
            print(f"{label} | {prompt!r}: {[pipe.tokenizer.decode(d, skip_special_tokens=True) for d in drafts]}",
                  file=sys.stderr)
        m = {key: v / len(prompts) for key, v in acc.items()}
        rows.append(f"| {label} | {m['s']:.3f} | {m['passes']:.1f} | {m['d2']:.3f} | {m['diff']:.1f} | "
                    f"{m['mean']:.3f} | {m['best']:.3f} |")
    md = "\n".join([
        "## Superposed decoding vs nucleus sampling and beam search (embedded SmolLM2-135M)",
        "",
        f"Machine: {machine()}.",
        f"{len(prompts)} chat prompts, k = {k} drafts each, max_new_tokens = {n}. s / draft: wall time per "
        "prompt / k (nucleus: k calls, one per seed). Rows / draft: forward rows / k, each pass counting "
        "the rows it runs (beam search runs k rows per pass; superposed one: the host's unused prefill, its own "
        "prefill, then one per step). distinct-2: unique bigrams / "
        "all bigrams over a prompt's k drafts. LL: per-token log-likelihood log p(y)/|y| under the model "
        "(mean over the drafts, and the best draft). Means over prompts. Timings on a shared CPU are noisy.",
        "",
        "| method | s / draft | rows / draft | distinct-2 | different drafts | mean LL | best LL |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        *rows,
        "",
        f"Rerun: `python benchmarks/superposed.py --k {k} --new-tokens {n} --prompts {len(prompts)}`.",
        "",
    ])
    print(md)
    print(f"wrote {write_result('superposed', md)}", file=sys.stderr)


if __name__ == "__main__":
    main()
