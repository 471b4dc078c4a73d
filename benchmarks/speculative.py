"""Speculative decoding on the embedded model: every proposer against plain greedy and HF's own.

One process, side by side, greedy everywhere (every row must produce plain greedy's tokens; the
table says whether it did). Methods: decodekit plain greedy; the ``speculative`` plugin with each
proposer; HF ``generate`` plain, with ``prompt_lookup_num_tokens``, and with ``assistant_model``
when a separate draft model exists (the embedded model is the only real model here, so the
assistant row is skipped and the ``draft_model`` row drafts with the target itself: it shows the
mechanics and the acceptance ceiling, not a speed-up). Three prompt sets: input copying (code
editing, rewriting a given text), summarising a given passage, open chat.

Each method first runs one warm-up prompt outside the sets (so the plugin has timed a few
target passes and token recycling has a matrix); then each round runs every method over a set,
method after method, so that machine drift hits them alike. Reports new tokens per second, the
speedup over decodekit plain greedy on the same set (overall, and with each method's prefill
taken out), and the mean tokens committed per target pass; writes docs/results/speculative.md
(speculative_onednn.md with ``--cpu-kernels onednn``, ``..._<N>threads.md`` on N > 1 CPU threads).

    python benchmarks/speculative.py [--new-tokens 96] [--rounds 1] [--sets copy,summary,chat] [--threads 1]
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import add_cpu_args, add_device_args, cpu_variant, machine, result_name, write_result  # noqa: E402

from decodekit import Pipeline  # noqa: E402

TEXT = ("The comittee met on tuesday to discus the new budjet. Several members argued that the "
        "library shoud recieve more funding, because it's hours had been cut twice in the last "
        "year. Others beleived the money was better spent on road repairs, wich have been delayed "
        "since the winter storms. In the end, the comittee agreed to revisit the question next month.")
CODE = '''def total_price(items, tax):
    total = 0
    for item in items:
        if item["quantity"] > 0:
            total = total + item["price"] * item["quantity"]
    total = total + total * tax
    return total


def cheapest(items):
    best = None
    for item in items:
        if best is None or item["price"] < best["price"]:
            best = item
    return best
'''
PASSAGE = ("Honeybees live in colonies of tens of thousands of workers, a few hundred drones and a "
           "single queen. Workers are sterile females; during their short summer lives they clean "
           "cells, feed larvae, build wax comb, guard the entrance and finally forage for nectar and "
           "pollen. A forager that finds a rich patch of flowers returns to the hive and performs a "
           "waggle dance whose angle and duration tell her sisters the direction and distance of the "
           "food. In winter the colony survives by clustering tightly and eating stored honey, with "
           "workers shivering their flight muscles to keep the centre of the cluster warm.")

SETS = {
    "copy": [
        f"Correct the typos in this text and output the whole text:\n\n{TEXT}",
        f"Copy the following text, replacing every 'comittee' with 'committee':\n\n{TEXT}",
        f"Rename the variable `total` to `amount` in this Python code. Reply with the full code only.\n\n{CODE}",
    ],
    "summary": [
        f"Summarise the following passage in three sentences.\n\n{PASSAGE}",
        f"Summarise this meeting note in two sentences.\n\n{TEXT}",
        f"Summarise what this Python code does.\n\n{CODE}",
    ],
    "chat": [
        "What are some good habits for staying productive when working from home?",
        "Tell me a short story about a lighthouse keeper and a seagull.",
        "Why do cats purr?",
    ],
}
WARMUP = "Repeat this sentence exactly: the quick brown fox jumps over the lazy dog near the river bank."

PROPOSERS = {
    "prompt_lookup": {"proposer": "prompt_lookup"},
    "token_recycling": {"proposer": "token_recycling"},
    "layer_skip": {"proposer": "layer_skip"},
    "layer_skip (dynamic tree)": {"proposer": "layer_skip", "tree": "dynamic"},
    "aded": {"proposer": "aded"},
    "draft_model (self-draft)": {"proposer": "draft_model", "draft": "smollm2-135m"},
    "heads medusa (shipped)": {"proposer": "heads", "head_kind": "medusa"},
    "heads hydra (shipped)": {"proposer": "heads", "head_kind": "hydra"},
}


# One target pass over s new tokens on the issue's 2-core CPU (issue 3): 76 / 127 / 141 / 142 / 173 ms.
ISSUE_COSTS_MS = {1: 76.0, 4: 127.0, 8: 141.0, 16: 142.0, 32: 173.0}


def issue_cost_ms(s: int) -> float:
    """Linear interpolation of ISSUE_COSTS_MS; beyond 32 tokens, the 16→32 slope."""
    xs = sorted(ISSUE_COSTS_MS)
    if s >= xs[-1]:
        return ISSUE_COSTS_MS[32] + (s - 32) * (ISSUE_COSTS_MS[32] - ISSUE_COSTS_MS[16]) / 16
    lo = max(x for x in xs if x <= s)
    hi = min(x for x in xs if x >= s)
    if lo == hi:
        return ISSUE_COSTS_MS[lo]
    w = (s - lo) / (hi - lo)
    return (1 - w) * ISSUE_COSTS_MS[lo] + w * ISSUE_COSTS_MS[hi]


class PassCounter:
    """Counts the model's forward calls and their modelled cost (every module sharing its hooks:
    the target, a self-draft, and the layer-skip view, whose cost scales with its kept layers),
    and times the first prefill (the target's pass over the prompt) of each generate call.

    Prefill calls (no cache yet) are left out of the modelled cost: every method pays one alike.
    """

    def __init__(self, model: torch.nn.Module):
        self.n = 0
        self.modelled_ms = 0.0
        self.prefill_s = 0.0
        self._prefill_started: float | None = None
        self.handle = model.register_forward_pre_hook(self._hook, with_kwargs=True)
        self.post = model.register_forward_hook(self._done)

    def reset(self) -> None:
        self.n, self.modelled_ms, self.prefill_s, self._prefill_started = 0, 0.0, 0.0, None

    def _hook(self, module, args, kwargs):
        self.n += 1
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        if cache is None or cache.get_seq_length() == 0:
            if self.n == 1:
                _sync(module)
                self._prefill_started = time.perf_counter()
            return
        ids = kwargs.get("input_ids")
        s = ids.shape[1] if ids is not None else 1
        skipped = sum(type(m).__name__ == "SkippedLayer" for m in module.modules())
        total = getattr(module.config, "num_hidden_layers", 1)
        self.modelled_ms += issue_cost_ms(s) * (1 - skipped / total)


    def _done(self, module, args, output):
        if self._prefill_started is not None:
            _sync(module)
            self.prefill_s = time.perf_counter() - self._prefill_started
            self._prefill_started = None


def _sync(module: torch.nn.Module) -> None:
    if next(module.parameters()).device.type == "cuda":
        torch.cuda.synchronize()


def run_ours(pipe: Pipeline, counter: PassCounter, ids: list[int], n: int
             ) -> tuple[list[int], float, int, float, float]:
    """(tokens, seconds, target passes, modelled ms, prefill seconds)"""
    counter.reset()
    t0 = time.perf_counter()
    res = pipe.generate(ids, max_new_tokens=n)
    return res.token_ids, time.perf_counter() - t0, res.stats.row_passes, counter.modelled_ms, counter.prefill_s


@torch.inference_mode()
def run_hf(model, counter: PassCounter, ids: list[int], n: int, **kw) -> tuple[list[int], float, int, float, float]:
    x = torch.tensor([ids], device=model.device)
    counter.reset()
    t0 = time.perf_counter()
    out = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=n, do_sample=False, **kw)
    dt = time.perf_counter() - t0
    return out[0, len(ids):].tolist(), dt, counter.n, counter.modelled_ms, counter.prefill_s


def truncated_draft(model: torch.nn.Module, keep: int) -> torch.nn.Module:
    """A separate, smaller HF model to draft with: the target's first ``keep`` decoder layers, its
    final norm and its LM head (a copy). The only real model here is the target, so this is the
    one draft that both decodekit's ``draft_model`` and HF's ``assistant_model`` can use."""
    draft = copy.deepcopy(model)
    draft.model.layers = draft.model.layers[:keep]
    draft.config.num_hidden_layers = keep
    if getattr(draft.config, "layer_types", None):
        draft.config.layer_types = draft.config.layer_types[:keep]
    return draft.eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--new-tokens", type=int, default=96)
    ap.add_argument("--rounds", type=int, default=1,
                    help="times every set is run; from the second round on, the state the plugin keeps across "
                         "calls (token recycling's matrix, ADED's table) has seen these very answers, which "
                         "flatters those proposers: keep 1 for figures")
    ap.add_argument("--sets", default="copy,summary,chat")
    ap.add_argument("--methods", default="", help="comma-separated subset of method names (default: all)")
    ap.add_argument("--hf-lookup", type=int, default=10, help="HF prompt_lookup_num_tokens")
    ap.add_argument("--truncated-draft", type=int, default=0, metavar="K",
                    help="also run decodekit draft_model and HF assistant_model with the target's first K "
                         "layers as the draft (0: skip)")
    ap.add_argument("--issue-costs", action="store_true",
                    help="give the plugin the issue's CPU pass costs (verify_costs) instead of timing passes")
    add_cpu_args(ap, "speculative")
    add_device_args(ap)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    where = {"device": args.device, "dtype": args.dtype, "cpu_kernels": args.cpu_kernels}

    base = Pipeline("smollm2-135m", decoding={"strategy": "greedy", "max_new_tokens": args.new_tokens}, **where)
    model = base.model
    eos = sorted(base.eos_token_ids())
    model.generation_config.pad_token_id = base.pad_token_id
    counter = PassCounter(model)

    methods: dict[str, callable] = {"decodekit greedy": lambda ids, n: run_ours(base, counter, ids, n)}
    extra = {"verify_costs": ISSUE_COSTS_MS} if args.issue_costs else {}
    for name, opts in PROPOSERS.items():
        pipe = Pipeline("smollm2-135m", decoding={"strategy": "greedy", "max_new_tokens": args.new_tokens},
                        plugins=[{"name": "speculative", **opts, **extra}], **where)
        methods[f"speculative: {name}"] = (lambda p: lambda ids, n: run_ours(p, counter, ids, n))(pipe)
    if args.truncated_draft:
        from decodekit_speculative.options import SpeculativeOptions
        from decodekit_speculative.plugin import Speculative

        draft = truncated_draft(model, args.truncated_draft)
        dec = {"strategy": "greedy", "max_new_tokens": args.new_tokens}
        plug = Speculative(SpeculativeOptions(proposer="draft_model", **extra), base, draft_model=draft)
        pipe = Pipeline(model, tokenizer=base.tokenizer, decoding=dec, plugins=[plug])
        label = f"first {args.truncated_draft} layers"
        methods[f"speculative: draft_model ({label})"] = (lambda p: lambda ids, n: run_ours(p, counter, ids, n))(pipe)
        methods[f"HF assistant_model ({label})"] = lambda ids, n: run_hf(
            model, counter, ids, n, eos_token_id=eos, assistant_model=draft)
    methods["HF generate greedy"] = lambda ids, n: run_hf(model, counter, ids, n, eos_token_id=eos)
    methods[f"HF prompt lookup ({args.hf_lookup})"] = lambda ids, n: run_hf(
        model, counter, ids, n, eos_token_id=eos, prompt_lookup_num_tokens=args.hf_lookup)
    if args.methods:
        keep = {m.strip() for m in args.methods.split(",")}
        methods = {k: v for k, v in methods.items() if k in keep or k == "decodekit greedy"}

    warm = base.encode(WARMUP)
    for name, fn in methods.items():
        fn(warm, 24)

    sets = [s for s in args.sets.split(",") if s]
    rows = []
    for set_name in sets:
        prompts = [base.encode(p) for p in SETS[set_name]]
        totals = {m: [0, 0.0, 0, 0.0, 0.0] for m in methods}  # tokens, seconds, target passes, modelled ms, prefill s
        same = {m: True for m in methods}
        for _ in range(args.rounds):
            for ids in prompts:
                ref = None
                for name, fn in methods.items():
                    toks, dt, passes, ms, prefill = fn(ids, args.new_tokens)
                    if ref is None:
                        ref = toks
                    same[name] &= toks == ref
                    for i, v in enumerate((len(toks), dt, passes, ms, prefill)):
                        totals[name][i] += v
        plain = totals["decodekit greedy"]
        plain_tps, plain_mtps = plain[0] / plain[1], plain[0] / max(plain[3], 1e-9)
        plain_dtps = plain[0] / (plain[1] - plain[4])
        for name, (n_tok, secs, passes, ms, prefill) in totals.items():
            tps, mtps, dtps = n_tok / secs, n_tok / max(ms, 1e-9), n_tok / (secs - prefill)
            rows.append((set_name, name, tps, tps / plain_tps, dtps / plain_dtps, mtps / plain_mtps,
                         n_tok / max(passes, 1), same[name]))
            print(f"{set_name:8s} {name:38s} {tps:7.2f} tok/s  {tps / plain_tps:5.2f}x  after prefill "
                  f"{dtps / plain_dtps:5.2f}x  modelled {mtps / plain_mtps:5.2f}x  "
                  f"{n_tok / max(passes, 1):5.2f} tok/pass  same={same[name]}", flush=True)

    on_cpu = model.device.type == "cpu"
    bf16_cpu = on_cpu and model.dtype == torch.bfloat16
    flags = " --dtype bfloat16" if bf16_cpu else "" if on_cpu else f" --device {args.device} --dtype {args.dtype}"
    onednn = args.cpu_kernels == "onednn"
    if onednn:
        flags += " --cpu-kernels onednn"
    if args.truncated_draft:
        flags += f" --truncated-draft {args.truncated_draft}"
    if on_cpu:
        flags += f" --threads {torch.get_num_threads()}"
    lines = [
        "# Speculative decoding on the embedded model" + ("" if on_cpu else f" ({model.device.type})")
        + (", oneDNN CPU kernels" if onednn else "") + (", bfloat16" if bf16_cpu else ""),
        "",
        f"Machine: {machine()}. Device {model.device}, {str(model.dtype).removeprefix('torch.')}.",
        "",
        f"`python benchmarks/speculative.py --new-tokens {args.new_tokens} --rounds {args.rounds}{flags}`: greedy decoding "
        f"of SmolLM2-135M-Instruct, up to {args.new_tokens} new tokens per prompt, {len(SETS['copy'])} prompts "
        "per set. tok/s counts new tokens over wall time; the speedup is over decodekit plain greedy on "
        "the same prompts in the same run; tok/pass is the mean number of tokens committed per target "
        "forward pass (HF: per forward call of the target model). \"same\" says whether the method "
        "produced exactly decodekit greedy's tokens. \"after prefill\" is the speedup with each method's "
        "prefill (its first target pass, over the prompt) taken out of its wall time: every method pays "
        "about the same prefill, which caps the overall speedup on these short prompts.",
        "",
        "\"modelled\" (CPU runs only) is the speedup the same passes would give at the issue's measured CPU costs "
        "(one pass over 1 / 4 / 8 / 16 / 32 new tokens = 76 / 127 / 141 / 142 / 173 ms, interpolated; "
        "prefill left out; a layer-skip pass scaled by its share of layers): it does not depend on "
        "how loaded the machine was during the run.",
        "",
        "There is no second real model in this environment. With `--truncated-draft K`, decodekit's "
        "`draft_model` and HF `generate(assistant_model=...)` both draft with a copy of the target cut to "
        "its first K layers (same tokenizer, a weak draft: it shows the two side by side, not a good "
        "draft). The `draft_model (self-draft)` row drafts with the target itself (every draft token "
        "would be accepted, but each costs a full forward, so drafting cannot pay: the row shows that the "
        "planner sees this from its timings and falls back to plain steps, at about 1.0x).",
        "",
    ]
    if args.rounds > 1:
        lines += [f"`--rounds {args.rounds}` runs every prompt {args.rounds} times with the same pipelines: from the "
                  "second round on, token recycling's matrix and ADED's table (kept across calls on purpose) have "
                  "seen these very answers, so their rows overstate what a new prompt gets.", ""]
    if onednn:
        lines += ["`--cpu-kernels onednn`: the model's linear layers run through oneDNN with pre-packed weights "
                  "(`cpu_kernels: onednn`, decodekit/onednn.py), for every row of this table, HF's included (they "
                  "share the model object). A pass over several new tokens then costs far less than with "
                  "torch's default kernels, while one to three rows run through whichever kernel was timed "
                  "faster for each weight shape when the model was packed, so the plain greedy the speedups are "
                  "over is at least as fast as with the default kernels (compare the tok/s with speculative.md "
                  "recorded on the same machine).", ""]
    if bf16_cpu:
        lines += ["`--dtype bfloat16` on the CPU: every row runs the model in bfloat16 (its tokens are bfloat16 "
                  "greedy decoding's, not float32's), with decodekit's pass-invariant attention "
                  "(decodekit/invariant_attention.py): a position's logits are bitwise the same whether it is "
                  "scored alone or inside a verify pass, so drafting cannot change the tokens. That needs the "
                  "prompt's prefill to be a pass of its own (decodekit drafts from the second pass on); HF's "
                  "assisted generation puts its first candidates in the prompt's pass, so its rows can leave "
                  "plain greedy's tokens in bfloat16 (\"NO\" in the last column)."
                  + (" With oneDNN the bfloat16 products run on the CPU's AMX tiles where it has them: a pass "
                     "over 1 to 16 new tokens costs about the same, and a plain step is faster than in float32 "
                     "(compare decodekit greedy's tok/s with speculative_onednn.md recorded on the same machine)."
                     if onednn else ""), ""]
    if on_cpu:
        lines += ["| prompt set | method | tok/s | speedup | after prefill | modelled speedup | tok/pass | same |",
                  "| --- | --- | ---: | ---: | ---: | ---: | ---: | :---: |"]
    else:
        lines += ["| prompt set | method | tok/s | speedup | after prefill | tok/pass | same |",
                  "| --- | --- | ---: | ---: | ---: | ---: | :---: |"]
    for set_name, name, tps, sp, dsp, msp, tpp, ok in rows:
        modelled = f" {msp:.2f}x |" if on_cpu else ""
        lines.append(f"| {set_name} | {name} | {tps:.2f} | {sp:.2f}x | {dsp:.2f}x |{modelled} {tpp:.2f} | "
                     f"{'yes' if ok else 'NO'} |")
    name = cpu_variant("speculative", args.cpu_kernels, model.device, model.dtype)
    out = write_result(result_name(name, model.device), "\n".join(lines) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
