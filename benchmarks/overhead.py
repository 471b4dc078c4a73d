"""Host overhead: decodekit greedy vs HF generate vs a bare forward loop with a KV cache.

All three produce the same tokens (checked) on the embedded model; each round runs every method
once per prompt, in turn, so that drift of the machine's speed hits all of them alike. Reports the
median tokens/s over rounds and the ratios, and writes docs/results/overhead.md (overhead_onednn.md
with ``--cpu-kernels onednn``, ``..._<N>threads.md`` on N > 1 CPU threads).

    python benchmarks/overhead.py [--rounds 5] [--new-tokens 64] [--cpu-kernels onednn] [--threads N]
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (add_cpu_args, add_device_args, cpu_variant, machine, median, result_name,  # noqa: E402
                     timed, write_result)

from decodekit import Pipeline  # noqa: E402

PROMPTS = [
    "Write a short story about a robot who learns to paint.",
    "Explain how a hash table works, with an example.",
    "Describe the water cycle for a ten-year-old.",
]


@torch.inference_mode()
def bare_loop(model, ids: list[int], n: int) -> list[int]:
    """The simplest fast greedy loop: prefill, then one token at a time with the KV cache."""
    dev = model.device
    x = torch.tensor([ids], device=dev)
    out = model(input_ids=x, use_cache=True, logits_to_keep=1)
    cache, new = out.cache, []
    for _ in range(n):
        tok = int(out.logits[0, -1].argmax())
        new.append(tok)
        if len(new) == n:
            break
        out = model(input_ids=torch.tensor([[tok]], device=dev), cache=cache, use_cache=True, logits_to_keep=1)
        cache = out.cache
    return new


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--new-tokens", type=int, default=64)
    add_cpu_args(ap, "overhead")
    add_device_args(ap)
    args = ap.parse_args()
    n = args.new_tokens
    if args.threads:
        torch.set_num_threads(args.threads)

    pipe = Pipeline("smollm2-135m", decoding={"strategy": "greedy", "max_new_tokens": n, "ignore_eos": True},
                    device=args.device, dtype=args.dtype, cpu_kernels=args.cpu_kernels)
    model = pipe.model
    gen_cfg = copy.deepcopy(model.generation_config)
    gen_cfg.eos_token_id = None  # run every method to exactly n tokens
    gen_cfg.do_sample = False
    gen_cfg.max_new_tokens = n
    ids = [pipe.encode(p) for p in PROMPTS]

    def hf(i: int) -> list[int]:
        x = torch.tensor([ids[i]], device=model.device)
        out = model.generate(x, attention_mask=torch.ones_like(x),
                             generation_config=gen_cfg)
        return out[0, len(ids[i]):].tolist()

    methods = {
        "decodekit greedy": lambda i: pipe.generate(ids[i]).token_ids,
        "HF generate": hf,
        "bare forward loop": lambda i: bare_loop(model, ids[i], n),
    }
    # warm-up, and whether each method gives HF generate's tokens (in float32 they must; in bf16 /
    # fp16 a different kernel choice may flip a near-tie, so a GPU run reports it instead)
    same = {k: True for k in methods}
    for i in range(len(ids)):
        outs = {k: f(i) for k, f in methods.items()}
        for k in methods:
            same[k] &= outs[k] == outs["HF generate"]
    if model.dtype == torch.float32:
        assert all(same.values()), f"methods disagree in float32: {same}"

    rates: dict[str, list[float]] = {k: [] for k in methods}
    for _ in range(args.rounds):
        for name, f in methods.items():
            secs, toks = timed(lambda: sum(len(f(i)) for i in range(len(ids))))
            rates[name].append(toks / secs)

    med = {k: median(v) for k, v in rates.items()}
    lines = [
        "## Host overhead (greedy, embedded SmolLM2-135M"
        + (", oneDNN CPU kernels)" if args.cpu_kernels == "onednn" else ")"),
        "",
        f"Machine: {machine()}.",
        f"Device {model.device}, {str(model.dtype).removeprefix('torch.')}"
        + (", oneDNN CPU kernels (all three methods share the model)" if args.cpu_kernels == "onednn" else "") + ". "
        f"{len(PROMPTS)} chat prompts × {n} new tokens, {args.rounds} interleaved rounds; median tokens/s.",
        "\"same\" says whether the method produced HF generate's tokens on every prompt (checked before timing).",
        "",
        "| method | tokens/s | vs HF generate | vs bare loop | same |",
        "| --- | ---: | ---: | ---: | :---: |",
    ]
    for k in methods:
        lines.append(f"| {k} | {med[k]:.2f} | {med[k] / med['HF generate']:.3f} | "
                     f"{med[k] / med['bare forward loop']:.3f} | {'yes' if same[k] else 'NO'} |")
    flags = "" if model.device.type == "cpu" else f" --device {args.device} --dtype {args.dtype}"
    if args.cpu_kernels == "onednn":
        flags += " --cpu-kernels onednn"
    if args.threads:
        flags += f" --threads {args.threads}"
    lines += ["", f"Rerun: `python benchmarks/overhead.py --rounds {args.rounds} --new-tokens {n}{flags}`.", ""]
    text = "\n".join(lines)
    print(text)
    write_result(result_name(cpu_variant("overhead", args.cpu_kernels, model.device, model.dtype), model.device), text)


if __name__ == "__main__":
    main()
