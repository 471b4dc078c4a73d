"""The cost of each plugin stack against plain decoding, and the speedup speculative decoding
brings to each, in one process on the embedded model.

Methods: plain greedy, the three example stacks (examples/pipelines/stack-*.yaml) and the full
stack speculative + grammar (JSON Schema) + guidance, each without and with a ``speculative``
entry (``proposer: prompt_lookup``, its defaults otherwise) in front of the stack's plugins.
Every method decodes the same prompts. Each round runs every method once over every prompt, in
turn, so that drift of the machine's speed hits all of them alike; the table reports median
tokens/s over rounds. A warm-up pass checks that greedy stacks give the same tokens with and
without speculative decoding (the sampling stack is exact in distribution, not token for token).
Writes docs/results/composition.md (``composition_cuda.md`` on a GPU).

    python benchmarks/composition.py [--rounds 3] [--max-new-tokens 64] [--device cpu] [--note TEXT]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, add_device_args, machine, median, result_name, timed, write_result  # noqa: E402

from decodekit import Pipeline  # noqa: E402

PROMPTS = [
    "Paris hosted the World's Fair in 1889. Extract the city and the year as JSON.",
    "Why do leaves change colour in autumn?",
    "What will the weather be like tomorrow?",
]
SPECULATIVE = {"name": "speculative", "proposer": "prompt_lookup"}
EXAMPLES = ROOT / "examples" / "pipelines"


def load_stack(stem: str) -> tuple[dict, list[dict]]:
    """``(decoding, plugins without speculative)`` of ``examples/pipelines/<stem>.yaml``."""
    cfg = yaml.safe_load((EXAMPLES / f"{stem}.yaml").read_text())
    plugins = [p for p in cfg.get("plugins", []) if p["name"] != "speculative"]
    return dict(cfg.get("decoding", {})), plugins


def stacks() -> dict[str, tuple[dict, list[dict]]]:
    """Name → (decoding, plugins) for plain greedy, the example stacks and the full stack."""
    out = {"plain greedy": ({"strategy": "greedy"}, [])}
    for stem in ("stack-json-extraction", "stack-on-topic", "stack-aligned-structured"):
        out[stem] = load_stack(stem)
    _, json_plugins = load_stack("stack-json-extraction")
    _, topic_plugins = load_stack("stack-on-topic")
    guidance = [p for p in topic_plugins if p["name"] == "guidance"]
    out["full: grammar + guidance"] = ({"strategy": "greedy"}, json_plugins + guidance)
    return out


def describe(plugins: list[dict]) -> str:
    return " + ".join(p["name"] for p in plugins) or "(none)"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--note", default="", help="a line added to the results (e.g. how the machine was shared)")
    add_device_args(ap)
    args = ap.parse_args()
    n = args.max_new_tokens

    base = Pipeline("smollm2-135m", decoding={"strategy": "greedy", "max_new_tokens": n},
                    device=args.device, dtype=args.dtype)
    model, tok = base.model, base.tokenizer
    ids = [base.encode(p) for p in PROMPTS]

    pipes: dict[tuple[str, bool], Pipeline] = {}
    plugins_of: dict[str, list[dict]] = {}
    for name, (decoding, plugins) in stacks().items():
        plugins_of[name] = plugins
        dec = {**decoding, "max_new_tokens": n, "seed": decoding.get("seed", 0)}
        for spec in (False, True):
            entries = ([SPECULATIVE] if spec else []) + plugins
            pipes[(name, spec)] = Pipeline(model, tokenizer=tok, decoding=dec, plugins=entries)

    def run(key: tuple[str, bool]) -> tuple[int, int, list[list[int]]]:
        """(new tokens, target passes, outputs) over every prompt."""
        toks = passes = 0
        outs = []
        for x in ids:
            res = pipes[key].generate(x)
            toks += res.stats.new_tokens
            passes += res.stats.target_passes
            outs.append(res.token_ids)
        return toks, passes, outs

    # warm-up; greedy stacks must give the same tokens with and without speculative decoding
    names = list(plugins_of)
    same: dict[str, str] = {}
    passes_per_token: dict[tuple[str, bool], float] = {}
    for name in names:
        (t0, p0, o0), (t1, p1, o1) = run((name, False)), run((name, True))
        passes_per_token[(name, False)], passes_per_token[(name, True)] = p0 / t0, p1 / t1
        greedy = pipes[(name, False)].config.decoding.strategy == "greedy"
        same[name] = ("yes" if o0 == o1 else "NO") if greedy else "n/a (sampling)"

    rates: dict[tuple[str, bool], list[float]] = {k: [] for k in pipes}
    for _ in range(args.rounds):
        for key in pipes:  # interleaved: every method once per round
            secs, toks = timed(lambda: run(key)[0])
            rates[key].append(toks / secs)
    med = {k: median(v) for k, v in rates.items()}
    plain = med[("plain greedy", False)]

    lines = [
        "## Composition: the cost of each stack, and what speculative decoding buys it",
        "",
        f"Machine: {machine()}.",
        f"Device {model.device}, {str(model.dtype).removeprefix('torch.')}. Embedded SmolLM2-135M; "
        f"{len(PROMPTS)} chat prompts (the same for every method), max_new_tokens = {n}, "
        f"{args.rounds} interleaved rounds; median tokens/s over rounds.",
        "Stacks: the plugins of `examples/pipelines/stack-*.yaml` (their decoding strategy, "
        f"max_new_tokens overridden) and the full stack grammar (the JSON Schema of "
        "`stack-json-extraction.yaml`) + guidance (cfg, γ = 1.5). \"+ spec\": a `speculative` entry "
        "(`proposer: prompt_lookup`, defaults otherwise) first. Cost: plain greedy's tokens/s ÷ the "
        "stack's (time per token relative to plain decoding). Speedup: the stack's tokens/s with "
        "speculative ÷ without. Passes/token: target forward passes per generated token. Same: "
        "greedy output token-identical with and without speculative (checked in the warm-up).",
    ]
    if args.note:
        lines.append(args.note)
    lines += [
        "",
        "| stack | plugins | strategy | tokens/s | cost vs plain | + spec tokens/s | + spec cost vs plain "
        "| speedup from spec | passes/token (+ spec) | same |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | :---: |",
    ]
    for name in names:
        off, on = med[(name, False)], med[(name, True)]
        strategy = pipes[(name, False)].config.decoding.strategy
        lines.append(
            f"| {name} | {describe(plugins_of[name])} | {strategy} | {off:.2f} | {plain / off:.2f}x | {on:.2f} | "
            f"{plain / on:.2f}x | {on / off:.2f}x | {passes_per_token[(name, False)]:.2f} "
            f"({passes_per_token[(name, True)]:.2f}) | {same[name]} |")
    flags = "" if model.device.type == "cpu" else f" --device {args.device} --dtype {args.dtype}"
    lines += ["", f"Rerun: `python benchmarks/composition.py --rounds {args.rounds} --max-new-tokens {n}{flags}`.",
              ""]
    text = "\n".join(lines)
    print(text)
    write_result(result_name("composition", model.device), text)


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
