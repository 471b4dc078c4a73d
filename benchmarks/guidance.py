"""The cost of guidance: tokens/s of CFG and contrastive decoding against plain greedy, in one run.

On the embedded model, every method decodes the same prompts to exactly ``--new-tokens`` tokens
(EOS ignored). CFG runs one extra forward of the unconditional branch per step, so about half of
plain greedy's speed is the floor when the unconditional branch is a second pass (HF transformers'
``generate(guidance_scale=...)``, the peer, whose tokens are checked equal to ours first, and our
``batch_branch: false``); by default decodekit runs the branch's rows inside the target's own
pass. The "batch of" rows decode all prompts in one call.
Each round runs every method once, in turn, so drift of the machine's speed hits all alike;
reports median tokens/s and writes docs/results/guidance.md.

    python benchmarks/guidance.py [--rounds 3] [--new-tokens 32]
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import add_device_args, machine, median, result_name, timed, write_result  # noqa: E402

from decodekit import Pipeline  # noqa: E402

PROMPTS = [
    "Write a short story about a robot who learns to paint.",
    "Explain how a hash table works, with an example.",
    "Describe the water cycle for a ten-year-old.",
]
GAMMA = 1.5
NEGATIVE = "Write something boring."


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--new-tokens", type=int, default=32)
    add_device_args(ap)
    args = ap.parse_args()
    n = args.new_tokens
    dec = {"strategy": "greedy", "max_new_tokens": n, "ignore_eos": True}

    plain = Pipeline("smollm2-135m", decoding=dec, device=args.device, dtype=args.dtype)
    model, tok = plain.model, plain.tokenizer

    def pipe(**opts) -> Pipeline:
        return Pipeline(model, tokenizer=tok, decoding=dec, plugins=[{"name": "guidance", **opts}])

    cfg = pipe(guidance_scale=GAMMA)
    cfg_separate = pipe(guidance_scale=GAMMA, batch_branch=False)
    cfg_neg = pipe(guidance_scale=GAMMA, negative_prompt=NEGATIVE)
    cd_ctx = pipe(mode="contrastive", amateur_context=8, beta=0.5)
    cd_skip = pipe(mode="contrastive", amateur_skip_layers=list(range(8, 30)), beta=0.5)
    ids = [plain.encode(p) for p in PROMPTS]

    gen_cfg = copy.deepcopy(model.generation_config)
    gen_cfg.eos_token_id = None  # run to exactly n tokens
    gen_cfg.do_sample = False

    def hf_cfg(i: int) -> list[int]:
        x = torch.tensor([ids[i]], device=model.device)
        out = model.generate(x, attention_mask=torch.ones_like(x),
                             generation_config=gen_cfg, max_new_tokens=n, min_new_tokens=0,
                             guidance_scale=GAMMA)
        return out[0, len(ids[i]):].tolist()

    one = lambda p: (lambda i: p.generate(ids[i]).token_ids)  # noqa: E731
    per_prompt: dict[str, Callable[[int], list[int]]] = {
        "decodekit greedy (no guidance)": one(plain),
        f"decodekit CFG γ={GAMMA}": one(cfg),
        f"decodekit CFG γ={GAMMA}, branch as a second pass": one(cfg_separate),
        f"HF generate CFG γ={GAMMA}": hf_cfg,
        f"decodekit CFG γ={GAMMA}, negative prompt": one(cfg_neg),
        "decodekit contrastive, amateur_context=8": one(cd_ctx),
        "decodekit contrastive, layers 8-29 skipped": one(cd_skip),
    }
    batched: dict[str, Pipeline] = {
        f"batch of {len(ids)}: greedy (no guidance)": plain,
        f"batch of {len(ids)}: CFG γ={GAMMA}": cfg,
        f"batch of {len(ids)}: CFG γ={GAMMA}, branch as a second pass": cfg_separate,
    }

    # warm-up, and our CFG equals HF's token for token (asserted in float32; in bf16 / fp16 a
    # different kernel choice may flip a near-tie, so a GPU run reports it instead)
    same_as_hf = True
    for i in range(len(ids)):
        same_as_hf &= one(cfg)(i) == hf_cfg(i)
        same_as_hf &= one(cfg_separate)(i) == hf_cfg(i)
        for f in per_prompt.values():
            f(i)
    if model.dtype == torch.float32:
        assert same_as_hf, "decodekit CFG and HF CFG disagree"

    rates: dict[str, list[float]] = {k: [] for k in [*per_prompt, *batched]}
    for _ in range(args.rounds):
        for name, f in per_prompt.items():
            secs, toks = timed(lambda: sum(len(f(i)) for i in range(len(ids))))
            rates[name].append(toks / secs)
        for name, p in batched.items():
            secs, toks = timed(lambda: sum(len(c.token_ids) for c in p.generate(ids).completions))
            rates[name].append(toks / secs)

    med = {k: median(v) for k, v in rates.items()}
    base = med["decodekit greedy (no guidance)"]
    base_batch = med[f"batch of {len(ids)}: greedy (no guidance)"]
    lines = [
        "## Guidance: CFG and contrastive decoding against plain greedy (embedded SmolLM2-135M)",
        "",
        f"Machine: {machine()}. Device {model.device}, {str(model.dtype).removeprefix('torch.')}.",
        f"{len(PROMPTS)} chat prompts × {n} new tokens (EOS ignored), {args.rounds} interleaved rounds; "
        "median tokens/s. decodekit CFG and HF CFG produce "
        + ("identical tokens" if same_as_hf else "DIFFERENT tokens") + " (checked before timing).",
        "By default CFG's unconditional rows run inside the target's own forward pass (one pass over "
        "2B rows); \"branch as a second pass\" (`batch_branch: false`) runs them as a separate forward "
        "with its own cache, as HF does. A second pass puts the floor near 0.5× plain greedy on a device "
        "that runs one pass at a time; a cached amateur model pays it too, and the windowed amateur "
        "re-reads its window each step.",
        "",
        "| method | tokens/s | vs plain greedy |",
        "| --- | ---: | ---: |",
    ]
    for k in per_prompt:
        lines.append(f"| {k} | {med[k]:.2f} | {med[k] / base:.3f} |")
    for k in batched:
        lines.append(f"| {k} | {med[k]:.2f} | {med[k] / base_batch:.3f} (vs batched greedy) |")
    flags = "" if model.device.type == "cpu" else f" --device {args.device} --dtype {args.dtype}"
    lines += ["", f"Negative prompt: {NEGATIVE!r}. Rerun: `python benchmarks/guidance.py{flags}`.", ""]
    text = "\n".join(lines)
    print(text)
    write_result(result_name("guidance", model.device), text)


if __name__ == "__main__":
    main()
