"""Diverse beam search against plain beam search: list diversity and oracle likelihood.

On the embedded model, each method returns its whole list (B = 6 sequences) for every prompt:

* plain beam search (the built-in ``beam``; its lists are first checked equal to HF
  ``generate(num_beams=6)``'s), and
* ``diverse_beam`` with G groups and Hamming penalty λ.

Per list: distinct-1/2/3 (unique n-grams / all n-grams, pooled over the list), the number of
different sequences, the *oracle likelihood* (the best per-token log-likelihood log p(y)/|y| among
the list's sequences, scored by the model without any penalty) and the top-1 sequence's per-token
log-likelihood; averaged over prompts. Time is the wall time per prompt. Writes
docs/results/diverse_beam.md.

    python benchmarks/diverse_beam.py [--new-tokens 16]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, timed, write_result  # noqa: E402

from decodekit import Pipeline  # noqa: E402
from decodekit_diverse_beam.metrics import distinct_n  # noqa: E402

PROMPTS = [
    "Write a one-line poem about rain.",
    "Give me a name for a cat.",
    "Describe the sea in one sentence.",
    "What should I cook for dinner tonight?",
]
B = 6
METHODS = [  # (label, strategy, options)
    ("beam (B=6)", "beam", {}),
    ("diverse_beam G=3, λ=0", "diverse_beam", {"num_groups": 3, "diversity_penalty": 0.0}),
    ("diverse_beam G=3, λ=0.5", "diverse_beam", {"num_groups": 3, "diversity_penalty": 0.5}),
    ("diverse_beam G=3, λ=1", "diverse_beam", {"num_groups": 3, "diversity_penalty": 1.0}),
    ("diverse_beam G=3, λ=2", "diverse_beam", {"num_groups": 3, "diversity_penalty": 2.0}),
    ("diverse_beam G=6, λ=1", "diverse_beam", {"num_groups": 6, "diversity_penalty": 1.0}),
]


@torch.inference_mode()
def loglik(model, prompt: list[int], seq: list[int]) -> float:
    """Σ log p(seq | prompt) under the model (teacher forcing, no penalty)."""
    ids = torch.tensor([prompt + seq], device=model.device)
    logp = torch.log_softmax(model(input_ids=ids).logits[0, len(prompt) - 1:-1].float(), dim=-1)  # [|seq|, V]
    return float(logp.gather(1, torch.tensor(seq, device=model.device)[:, None]).sum())


def hf_beam(model, ids: list[int], n: int) -> list[list[int]]:
    out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                         num_beams=B, num_return_sequences=B, max_new_tokens=n, do_sample=False,
                         return_dict_in_generate=True, output_scores=True)
    lengths = (out.beam_indices != -1).sum(dim=1).tolist()
    return [s[len(ids):len(ids) + m].tolist() for s, m in zip(out.sequences, lengths)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--new-tokens", type=int, default=16)
    args = ap.parse_args()
    n = args.new_tokens
    base = Pipeline("smollm2-135m")
    model, tok = base.model, base.tokenizer
    ids = [base.encode(p) for p in PROMPTS]
    base.generate(ids[0], max_new_tokens=4)  # warm-up, so that the first method's time is fair

    rows = []
    for label, strategy, opts in METHODS:
        pipe = Pipeline(model, tokenizer=tok, decoding={
            "strategy": strategy, "num_beams": B, "num_return_sequences": B, "max_new_tokens": n, **opts})
        lists: list[list[list[int]]] = []
        secs, _ = timed(lambda: sum(lists.append([s.token_ids for s in pipe.generate(i).completions[0].sequences])
                                    or 1 for i in ids))
        if strategy == "beam":
            for i, got in zip(ids, lists):
                assert got == hf_beam(model, i, n), "decodekit beam and HF generate(num_beams) disagree"
        per_token = [[loglik(model, i, s) / len(s) for s in lst] for i, lst in zip(ids, lists)]
        mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
        rows.append({
            "label": label,
            "d1": mean([distinct_n(lst, 1) for lst in lists]),
            "d2": mean([distinct_n(lst, 2) for lst in lists]),
            "d3": mean([distinct_n(lst, 3) for lst in lists]),
            "unique": mean([len({tuple(s) for s in lst}) for lst in lists]),
            "oracle": mean([max(p) for p in per_token]),
            "top1": mean([p[0] for p in per_token]),
            "secs": secs / len(ids),
        })

    lines = [
        "## Diverse beam search vs beam search (embedded SmolLM2-135M)",
        "",
        f"Machine: {machine()}.",
        f"{len(PROMPTS)} chat prompts, B = {B} beams, all {B} sequences returned, max_new_tokens = {n}, "
        "length_penalty = 1, early_stopping = False. distinct-n: unique n-grams / all n-grams over a "
        "prompt's list. Oracle LL: the best per-token log-likelihood log p(y)/|y| in the list (model "
        "score, no penalty); top-1 LL: the same for the list's first sequence. Means over prompts. "
        "The beam lists equal HF `generate(num_beams=6)`'s (checked in the run).",
        "",
        "| method | distinct-1 | distinct-2 | distinct-3 | different sequences | oracle LL | top-1 LL | s / prompt |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(f"| {r['label']} | {r['d1']:.3f} | {r['d2']:.3f} | {r['d3']:.3f} | {r['unique']:.1f} | "
                     f"{r['oracle']:.3f} | {r['top1']:.3f} | {r['secs']:.2f} |")
    lines += ["", "Rerun: `python benchmarks/diverse_beam.py`.", ""]
    text = "\n".join(lines)
    print(text)
    write_result("diverse_beam", text)


if __name__ == "__main__":
    main()
