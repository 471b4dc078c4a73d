"""Momentum decoding against greedy search and nucleus sampling on the embedded model.

Open-ended continuation of raw text prefixes (no chat template), as in the paper. For each method:
rep-2/3/4 and diversity (SimCTG definitions, on whitespace-separated words; unique n-grams are
counted per text and summed over texts):

    rep-n     = 100 · (1 − Σ unique n-grams / Σ n-grams)
    diversity = Π_{n=2..4} (1 − rep-n / 100)

and decoding speed (new tokens / wall time of ``generate``, one prompt per call, methods
interleaved prompt by prompt so that a busy machine slows them alike). Prints a markdown table
and writes it, with the machine description, to ``docs/results/momentum.md``.

    python benchmarks/momentum.py                       # 8 prompts × 256 new tokens (as in the paper)
    python benchmarks/momentum.py --prompts 2 --max-new-tokens 32 --out /tmp/momentum.md
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import time
from pathlib import Path

import torch

from decodekit import Pipeline, hookimpl
from decodekit_momentum import Momentum

PROMPTS = [
    "The history of the city of Rome begins",
    "In a small village at the edge of the forest, there lived",
    "Scientists have discovered a new species of",
    "The best way to learn a new programming language is",
    "When the storm finally reached the coast,",
    "The museum's newest exhibition explores",
    "Every morning, the old fisherman would",
    "Researchers at the university announced today that",
]



class TimedMomentum(Momentum):
    """The momentum plugin (default options), timing its own rescore: the cost it adds per step."""

    name = "momentum"

    def __init__(self) -> None:
        super().__init__()
        self.seconds, self.calls = 0.0, 0

    @hookimpl
    def rescore(self, positions, logits):
        t0 = time.perf_counter()
        out = super().rescore(positions, logits)
        self.seconds += time.perf_counter() - t0
        self.calls += 1
        return out


MOMENTUM = "momentum (k 5, α 0.2)"
METHODS = {
    "greedy": ({"strategy": "greedy"}, []),
    "nucleus (top_p 0.95)": ({"strategy": "sample", "top_p": 0.95, "seed": 0}, []),
    MOMENTUM: ({"strategy": "greedy"}, [TimedMomentum]),
}


def rep_n(texts: list[str], n: int) -> float:
    unique = total = 0
    for text in texts:
        words = text.split()
        grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
        unique += len(set(grams))
        total += len(grams)
    return 100.0 * (1 - unique / total) if total else 0.0


def diversity(texts: list[str]) -> float:
    d = 1.0
    for n in (2, 3, 4):
        d *= 1 - rep_n(texts, n) / 100
    return d


def machine(device: str) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = f", GPU {torch.cuda.get_device_name(0)}" if device.startswith("cuda") else ""
    return (f"{cpu} ({os.cpu_count()} logical CPUs, torch threads {torch.get_num_threads()}){gpu}; "
            f"Python {platform.python_version()}, torch {torch.__version__}, device {device}")


def run(prompts: list[str], max_new_tokens: int, device: str) -> tuple[list[dict], dict[str, str], float]:
    pipes = {name: Pipeline("smollm2-135m", decoding={**dec, "max_new_tokens": max_new_tokens},
                            plugins=[make() for make in plugins], device=device)
             for name, (dec, plugins) in METHODS.items()}
    for p in pipes.values():  # warm-up: first-call allocations, lazy imports
        p.generate(prompts[0], raw=True, max_new_tokens=4)
    timed = pipes[MOMENTUM].plugins[0][1]
    timed.seconds, timed.calls = 0.0, 0
    texts: dict[str, list[str]] = {n: [] for n in pipes}
    tokens = {n: 0 for n in pipes}
    seconds = {n: 0.0 for n in pipes}
    for prompt in prompts:
        for name, p in pipes.items():
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            res = p.generate(prompt, raw=True)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            seconds[name] += time.perf_counter() - t0
            tokens[name] += len(res.token_ids)
            texts[name].append(res.text)
    rows = []
    for name in pipes:
        t = texts[name]
        rows.append({
            "method": name, "rep-2": rep_n(t, 2), "rep-3": rep_n(t, 3), "rep-4": rep_n(t, 4),
            "diversity": diversity(t), "tokens": tokens[name], "tokens/s": tokens[name] / seconds[name],
        })
    greedy_speed = rows[0]["tokens/s"]
    for r in rows:
        r["speed vs greedy"] = r["tokens/s"] / greedy_speed
    samples = {name: texts[name][0] for name in pipes}
    return rows, samples, timed.seconds / max(1, timed.calls)


def table(rows: list[dict]) -> str:
    head = "| method | rep-2 ↓ | rep-3 ↓ | rep-4 ↓ | diversity ↑ | new tokens | tokens/s | speed vs greedy |"
    lines = [head, "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['rep-2']:.2f} | {r['rep-3']:.2f} | {r['rep-4']:.2f} | "
                     f"{r['diversity']:.3f} | {r['tokens']} | {r['tokens/s']:.2f} | {r['speed vs greedy']:.2f}× |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prompts", type=int, default=len(PROMPTS), help="how many of the built-in prompts")
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent.parent / "docs/results/momentum.md"))
    args = ap.parse_args()
    prompts = PROMPTS[:args.prompts]
    rows, samples, rescore_s = run(prompts, args.max_new_tokens, args.device)
    greedy_step_s = 1 / rows[0]["tokens/s"]
    overhead = (f"The momentum plugin's own rescore took {rescore_s * 1e3:.2f} ms per step, "
                f"{100 * rescore_s / greedy_step_s:.1f}% of a greedy step ({greedy_step_s * 1e3:.1f} ms) in this run.")
    md = table(rows)
    print(md)
    print(overhead)
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    sample_md = "\n".join(f"* **{name}**: {text[:300].strip()!r}" for name, text in samples.items())
    doc = f"""# Momentum decoding: repetition, diversity and speed

`python benchmarks/momentum.py --prompts {len(prompts)} --max-new-tokens {args.max_new_tokens} --device {args.device}`
({when}).

Model: the embedded SmolLM2-135M-Instruct, float32. {len(prompts)} open-ended raw-text prefixes
(no chat template), up to {args.max_new_tokens} new tokens each (a row stops at EOS). rep-n and
diversity follow SimCTG on whitespace-separated words: rep-n = 100·(1 − unique n-grams / n-grams)
with unique n-grams counted per text and summed, diversity = Π_(n=2..4) (1 − rep-n/100).
Speed: new tokens / wall time of `generate`, one prompt per call, the three methods interleaved
prompt by prompt. Momentum: the `momentum` plugin with its defaults (k = 5, α = 0.2,
R = [0, 1, 3, 4, 5, 5]) under `strategy: greedy`. Nucleus: `strategy: sample`, `top_p: 0.95`, seed 0.

Machine: {machine(args.device)}.

{md}

{overhead}

First prompt ({prompts[0]!r}):

{sample_md}
"""
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(doc, encoding="utf-8")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
