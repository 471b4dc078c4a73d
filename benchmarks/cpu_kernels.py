"""What one target pass costs on this CPU with torch's default kernels and with ``cpu_kernels: onednn``.

Speculative decoding pays one target pass over ``s = 1 + N`` new tokens per step; the ratio
``cost(s) / cost(1)`` decides whether a draft of ``N`` tokens can pay at all. This times, on the
embedded model (float32, and bfloat16 with oneDNN where the CPU has native bfloat16) after a
cached context of ``--context`` tokens, a forward pass over ``s`` new tokens for each setup, side
by side in one process (interleaved, median of ``--reps``), bfloat16 also with decodekit's attention
kernel on AVX-512 vectors instead of AMX tiles (where it has tiles) and without the kernel
(``DECODEKIT_NATIVE=0``); the prefill of a short and a long prompt; and plain
greedy decoding with decodekit and with HF ``generate`` on each model.
Writes docs/results/cpu_kernels.md.

    python benchmarks/cpu_kernels.py [--reps 9] [--context 200] [--new-tokens 64]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, write_result  # noqa: E402

from decodekit import Pipeline, native, onednn  # noqa: E402

WIDTHS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32)
NO_KERNEL = "onednn bf16, no kernel"  # bfloat16 as it runs where decodekit's kernel is not built
VECTORS = "onednn bf16, vectors"      # the kernel on AVX-512 vectors, as on a CPU without AMX


@contextmanager
def attention_path(column: str):
    """While timing ``column``: decodekit's bfloat16 attention as that column names it."""
    if column == VECTORS:
        with native.kernel_path(amx=False):
            yield
        return
    with kernel_off(column == NO_KERNEL):
        yield


@contextmanager
def kernel_off(off: bool):
    """While ``off``: decodekit's bfloat16 attention without its compiled kernel
    (``DECODEKIT_NATIVE=0``: one torch sdpa call per query), as on a CPU without AVX-512 BF16."""
    if not off:
        yield
        return
    saved = os.environ.get("DECODEKIT_NATIVE")
    os.environ["DECODEKIT_NATIVE"] = "0"
    native.kernel.cache_clear()
    try:
        yield
    finally:
        if saved is None:
            del os.environ["DECODEKIT_NATIVE"]
        else:
            os.environ["DECODEKIT_NATIVE"] = saved
        native.kernel.cache_clear()
PREFILLS = (130, 500)  # prompt lengths whose prefill (a pass over the prompt, no cache) is timed
PROMPTS = ["What are some good habits for staying productive when working from home?",
           "Tell me a short story about a lighthouse keeper and a seagull."]


@torch.inference_mode()
def timed_pass(model, context: torch.Tensor, new: torch.Tensor) -> tuple[float, torch.Tensor]:
    """Milliseconds of one pass over ``new [1, s]`` after ``context [1, C]`` is cached (the cache is
    built untimed), and that pass's logits ``[1, s, V]``."""
    from transformers import DynamicCache

    cache = DynamicCache()
    model(context, past_key_values=cache, use_cache=True)
    t0 = time.perf_counter()
    logits = model(new, past_key_values=cache, use_cache=True).logits
    return (time.perf_counter() - t0) * 1e3, logits


def pass_ms(model, context: torch.Tensor, s: int) -> float:
    """:func:`timed_pass` over ``s`` fixed random tokens."""
    new = torch.randint(100, 20000, (1, s), generator=torch.Generator().manual_seed(s))
    return timed_pass(model, context, new)[0]


@torch.inference_mode()
def prefill_ms(model, ids: list[int], reps: int = 3) -> float:
    """Median milliseconds of the first pass over a prompt (no cache yet, as plain greedy pays it)."""
    x = torch.tensor([ids])
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        model(x, use_cache=True, logits_to_keep=1)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


@torch.inference_mode()
def hf_greedy_tps(model, ids: list[int], n: int, eos: list[int]) -> tuple[list[int], float]:
    x = torch.tensor([ids])
    t0 = time.perf_counter()
    out = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=n, do_sample=False, eos_token_id=eos)
    return out[0, len(ids):].tolist(), time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=9)
    ap.add_argument("--context", type=int, default=200)
    ap.add_argument("--new-tokens", type=int, default=64)
    args = ap.parse_args()

    setups = {"default": ("float32", "default"), "onednn": ("float32", "onednn")}
    if onednn.bf16_available():  # bfloat16 in AMX / AVX-512 BF16 tiles, where the CPU has them
        setups["onednn bf16"] = ("bfloat16", "onednn")
    kinds = tuple(setups)
    pipes = {k: Pipeline("smollm2-135m", decoding={"strategy": "greedy"}, device="cpu", dtype=dtype,
                         cpu_kernels=kernels) for k, (dtype, kernels) in setups.items()}
    for p in pipes.values():
        p.model.generation_config.pad_token_id = p.pad_token_id
    # pass columns: each setup, and bfloat16 again with the kernel on vectors and without the kernel
    bf16 = "onednn bf16" in kinds and native.kernel() is not None
    columns = kinds + ((VECTORS,) if bf16 and native.uses_amx() else ()) + ((NO_KERNEL,) if bf16 else ())
    model_of = {**{k: pipes[k].model for k in kinds},
                **{c: pipes.get("onednn bf16", pipes["onednn"]).model for c in (VECTORS, NO_KERNEL)}}
    context = torch.randint(100, 20000, (1, args.context), generator=torch.Generator().manual_seed(0))
    times = {(k, s): [] for k in columns for s in WIDTHS}
    for k in columns:  # warm-up
        with attention_path(k):
            pass_ms(model_of[k], context, 4)
    for _ in range(args.reps):
        for s in WIDTHS:
            for k in columns:
                with attention_path(k):
                    times[k, s].append(pass_ms(model_of[k], context, s))
    med = {key: statistics.median(v) for key, v in times.items()}
    for s in WIDTHS:
        print(f"s={s:3d}  " + "  ".join(f"{k} {med[k, s]:7.1f} ms" for k in columns), flush=True)

    # prefill: what a prompt costs before the first token (bfloat16 also with transformers' sdpa
    # attention instead of the pass-invariant one, to show what the invariance costs there)
    prefill_kinds = [(k, None) for k in kinds] + ([("onednn bf16", "sdpa")] if "onednn bf16" in kinds else [])
    pre = {}
    for k, attn in prefill_kinds:
        model = pipes[k].model
        own = model.config._attn_implementation
        if attn:
            model.set_attn_implementation(attn)
        for n in PREFILLS:
            ids = torch.randint(100, 20000, (n,), generator=torch.Generator().manual_seed(n)).tolist()
            prefill_ms(model, ids, reps=1)  # warm-up
            pre[k, attn, n] = prefill_ms(model, ids)
        model.set_attn_implementation(own)
        print("prefill", k, attn or "", {n: round(pre[k, attn, n], 1) for n in PREFILLS}, flush=True)

    # plain greedy, decodekit and HF generate, on each model
    decode = {}
    for k in kinds:
        pipe = pipes[k]
        eos = sorted(pipe.eos_token_ids())
        ours_n = ours_s = hf_n = hf_s = 0.0
        same = True
        for prompt in PROMPTS:
            ids = pipe.encode(prompt)
            t0 = time.perf_counter()
            r = pipe.generate(ids, max_new_tokens=args.new_tokens)
            ours_s += time.perf_counter() - t0
            ours_n += len(r.token_ids)
            toks, dt = hf_greedy_tps(pipe.model, ids, args.new_tokens, eos)
            hf_n, hf_s = hf_n + len(toks), hf_s + dt
            same &= toks == r.token_ids
        decode[k] = (ours_n / ours_s, hf_n / hf_s, same)
        print(f"{k}: decodekit greedy {ours_n / ours_s:.2f} tok/s, HF generate {hf_n / hf_s:.2f} tok/s, same={same}")
    same_kernels = all(pipes["default"].generate(p, max_new_tokens=args.new_tokens).token_ids
                       == pipes["onednn"].generate(p, max_new_tokens=args.new_tokens).token_ids for p in PROMPTS)

    lines = [
        "# CPU kernels: what a target pass costs",
        "",
        f"Machine: {machine()}.",
        "",
        f"`python benchmarks/cpu_kernels.py --reps {args.reps} --context {args.context} --new-tokens {args.new_tokens}`: "
        f"SmolLM2-135M-Instruct in float32. One forward pass over *s* new tokens after a cached context of "
        f"{args.context} tokens, median of {args.reps} (the kernel choices interleaved), with torch's default "
        "linear kernels (MKL sgemm) and with `cpu_kernels: onednn` (decodekit/onednn.py: oneDNN with weights "
        "packed once)"
        + (", and with `cpu_kernels: onednn` on the model in bfloat16 (`dtype: bfloat16`; it attends "
           "with decodekit/invariant_attention.py, every query computed as a plain step computes it: "
           "decodekit's compiled kernel, one call per pass"
           + (f", in AMX tiles; \"{VECTORS}\" is the kernel on AVX-512 vectors, as on a CPU without AMX"
              if VECTORS in columns else "")
           + (f"; \"{NO_KERNEL}\" is the same without that kernel, one torch sdpa call per query, as where "
              "it is not built" if NO_KERNEL in columns else "") + ")"
           if "onednn bf16" in kinds else "")
        + ". The ratio is the pass's cost in plain passes of the same setup: what a speculative "
        "draft of *s - 1* tokens must earn back.",
        "",
        "| new tokens *s* | " + " | ".join(f"{k} (ms) | ratio" for k in columns) + " |",
        "| ---: | " + " | ".join("---: | ---:" for _ in columns) + " |",
    ]
    for s in WIDTHS:
        lines.append(f"| {s} | " + " | ".join(f"{med[k, s]:.1f} | {med[k, s] / med[k, 1]:.2f}" for k in columns) + " |")
    lines += [
        "",
        "Prefill: one pass over a prompt of random tokens with an empty cache, median of 3 (ms)"
        + ("; \"onednn bf16, sdpa\" is the bfloat16 model with transformers' sdpa attention instead of "
           "decodekit's (whose prefill is one causal sdpa call per prompt as well)" if "onednn bf16" in kinds else "")
        + ":",
        "",
        "| setup | " + " | ".join(f"{n} tokens" for n in PREFILLS) + " |",
        "| --- | " + " | ".join("---:" for _ in PREFILLS) + " |",
    ]
    for k, attn in prefill_kinds:
        label = f"{k}, {attn}" if attn else k
        lines.append(f"| {label} | " + " | ".join(f"{pre[k, attn, n]:.0f}" for n in PREFILLS) + " |")
    lines += [
        "",
        f"Plain greedy decoding, {len(PROMPTS)} chat prompts, up to {args.new_tokens} new tokens (\"same\": HF "
        "`generate` gave decodekit's tokens on the same model):",
        "",
        "| setup | decodekit greedy (tok/s) | HF generate greedy (tok/s) | same |",
        "| --- | ---: | ---: | :---: |",
    ]
    for k in kinds:
        ours, hf, same = decode[k]
        lines.append(f"| {k} | {ours:.2f} | {hf:.2f} | {'yes' if same else 'NO'} |")
    lines += ["", f"Greedy tokens with onednn equal those with the default kernels on these prompts (float32 both): "
                  f"{'yes' if same_kernels else 'NO'}."]
    out = write_result("cpu_kernels", "\n".join(lines) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
