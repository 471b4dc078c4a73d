"""Exact-extract span decoding: exact search against greedy, on short extractive QA items.

On the embedded model, for each (passage, question) item:

* plain greedy (no mask): is its answer an exact span of the passage?
* ``span`` with ``search: greedy``: the masked greedy answer; does it end (EOS) within the budget,
  i.e. is it a complete span?
* ``span`` with ``search: exact``: the most probable span of up to max_new_tokens - 1 tokens.

Reports the share of answers that are spans, the mean log-likelihood log P(answer, EOS | prompt)
of the masked-greedy and exact answers (over items where greedy's is a complete span), how often
exact search finds a strictly more likely span, and the time per item. Writes docs/results/span.md.

    python benchmarks/span.py [--new-tokens 24]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, write_result  # noqa: E402

from decodekit import Pipeline  # noqa: E402
from decodekit_span import sequence_logprob  # noqa: E402

ITEMS = [
    ("The Eiffel Tower, completed in 1889, is 330 metres tall and stands in Paris.",
     "When was the Eiffel Tower completed?"),
    ("Marie Curie won the Nobel Prize in Physics in 1903 and in Chemistry in 1911.",
     "In which subject did Marie Curie win her second Nobel Prize?"),
    ("The Amazon river flows through Peru, Colombia and Brazil into the Atlantic Ocean.",
     "Into which ocean does the Amazon flow?"),
    ("Mount Kilimanjaro, a dormant volcano in Tanzania, rises 5,895 metres above sea level.",
     "In which country is Mount Kilimanjaro?"),
    ("The first Harry Potter book was published by Bloomsbury in London in June 1997.",
     "Who published the first Harry Potter book?"),
    ("Honey bees communicate the location of flowers to each other with a waggle dance.",
     "How do honey bees communicate the location of flowers?"),
]


def prompt_of(passage: str, question: str) -> str:
    return f"Passage: {passage}\nQuestion: {question}\nAnswer with a short phrase copied from the passage."


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--new-tokens", type=int, default=24)
    ap.add_argument("--items", type=int, default=len(ITEMS))
    args = ap.parse_args()
    n = args.new_tokens
    base = Pipeline("smollm2-135m", decoding={"max_new_tokens": n})
    model, tok = base.model, base.tokenizer
    items = ITEMS[: args.items]
    plain_spans = complete = better = 0
    ll_greedy = ll_exact = 0.0
    t_greedy = t_exact = 0.0
    lines = []
    for passage, question in items:
        q = prompt_of(passage, question)
        ids = base.encode(q)
        plain = base.generate(q).completions[0]
        plain_spans += plain.text.strip() != "" and plain.text.strip() in passage
        opts = {"name": "span", "passage": passage}
        t0 = time.perf_counter()
        g = Pipeline(model, tokenizer=tok, decoding={"max_new_tokens": n}, plugins=[opts]).generate(q).completions[0]
        t1 = time.perf_counter()
        e = Pipeline(model, tokenizer=tok, decoding={"max_new_tokens": n},
                     plugins=[{**opts, "search": "exact"}]).generate(q).completions[0]
        t2 = time.perf_counter()
        t_greedy, t_exact = t_greedy + t1 - t0, t_exact + t2 - t1
        le = sequence_logprob(model, ids, e.token_ids)
        lg = sequence_logprob(model, ids, g.token_ids) if g.finish_reason == "eos" else None
        if lg is not None:
            complete += 1
            ll_greedy, ll_exact = ll_greedy + lg, ll_exact + le
            better += le > lg + 1e-4
        lines.append(f"| {question} | {plain.text.strip()!r} | {g.text!r} | "
                     f"{'-' if lg is None else f'{lg:.2f}'} | {e.text!r} | {le:.2f} |")
    k = len(items)
    mean = lambda x: f"{x / complete:.3f}" if complete else "n/a"  # noqa: E731
    md = "\n".join([
        "## Exact-extract span decoding: exact search vs greedy (embedded SmolLM2-135M)",
        "",
        f"Machine: {machine()}.",
        f"{k} extractive QA items (a one-sentence passage and a question, chat template), max_new_tokens = {n}; "
        f"the exact search scores every span of up to {n - 1} tokens followed by EOS. LL: log P(answer, EOS | prompt) "
        "under the model. Means over the items where masked greedy ends with EOS (a complete span).",
        "",
        "| plain greedy answers that are spans | masked greedy complete spans | mean LL masked greedy | "
        "mean LL exact | exact strictly better | s / item greedy+mask | s / item exact |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        f"| {plain_spans}/{k} | {complete}/{k} | {mean(ll_greedy)} | {mean(ll_exact)} | {better}/{complete} | "
        f"{t_greedy / k:.2f} | {t_exact / k:.2f} |",
        "",
        "| question | plain greedy | masked greedy | LL | exact | LL |",
        "| --- | --- | --- | ---: | --- | ---: |",
        *lines,
        "",
        f"Rerun: `python benchmarks/span.py --new-tokens {n}`.",
        "",
    ])
    print(md)
    print(f"wrote {write_result('span', md)}", file=sys.stderr)


if __name__ == "__main__":
    main()
