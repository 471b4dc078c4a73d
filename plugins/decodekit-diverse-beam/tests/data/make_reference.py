"""Regenerate ``hf_group_beam_reference.json``: HF transformers v4 group beam search outputs.

HF transformers 5 no longer ships group beam search (it moved to a hub ``custom_generate`` repo,
which this project never downloads), so the reference outputs are computed once with v4.55 — the
last release with ``_group_beam_search`` and ``HammingDiversityLogitsProcessor`` in the library —
and committed as data. How it was produced::

    python3.11 -m venv /tmp/hf4
    /tmp/hf4/bin/pip install torch==2.13.0 "transformers==4.55.*"
    .venv/bin/python plugins/decodekit-diverse-beam/tests/data/make_reference.py /tmp/hf4/bin/python

Run with the project's venv, it saves the tiny random Llama (``decodekit.testing``) to a temporary
directory and lists the prompts (the embedded model's through its chat template); then it runs
itself under the v4 interpreter, which loads the same weights (the tiny model's directory and the
converted SmolLM2 in the decodekit cache) and calls ``generate(num_beams, num_beam_groups,
diversity_penalty, ...)``. Each model entry carries a checksum of its logits on the first prompt,
so the test can tell if the weights it rebuilds differ from these.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "hf_group_beam_reference.json"
TINY_PROMPTS = ["hello world", "ab", "the quick brown fox"]
EMBEDDED_PROMPTS = ["Write a one-line poem about rain.", "Name a colour."]
# (num_beams, num_groups, diversity_penalty, length_penalty, early_stopping, num_return_sequences)
TINY_SETTINGS = [
    (4, 2, 1.0, 1.0, False, 4),
    (6, 3, 0.5, 1.0, False, 6),
    (6, 3, 2.0, 2.0, "never", 3),
    (4, 4, 1.0, 0.0, True, 2),
]
EMBEDDED_SETTINGS = [(6, 3, 1.0, 1.0, False, 6), (4, 2, 0.5, 1.0, False, 2)]


def checksum(model, ids: list[int]) -> float:
    import torch

    with torch.no_grad():
        return float(model(input_ids=torch.tensor([ids])).logits.double().abs().sum())


def prepare(hf4_python: str) -> None:
    """Project venv: save the tiny model, encode prompts, run the v4 half, write the fixture."""
    from decodekit import Pipeline
    from decodekit.testing import tiny_model, tiny_tokenizer

    tok = tiny_tokenizer()
    llama = tiny_model("llama", tok)
    greedy = Pipeline(llama, tokenizer=tok, decoding={"max_new_tokens": 16})
    common = [t for t in greedy.generate(greedy.encode("hello world")).token_ids if t != 1]
    frequent_eos = [1, common[2], common[5]]  # two frequent tokens also end a sequence
    smol = Pipeline("smollm2-135m")
    with tempfile.TemporaryDirectory() as tmp:
        llama.save_pretrained(Path(tmp) / "llama")
        tiny_ids = [greedy.encode(p) for p in TINY_PROMPTS]
        smol_ids = [smol.encode(p) for p in EMBEDDED_PROMPTS]
        runs = []
        for eos in ([1], frequent_eos):
            for s in TINY_SETTINGS:
                runs.append({"model": "tiny-llama", "eos": eos, "pad": 0, "max_new_tokens": 14,
                             "settings": list(s), "prompts": tiny_ids})
        for s in EMBEDDED_SETTINGS:
            runs.append({"model": "smollm2-135m", "eos": sorted(smol.eos_token_ids()), "pad": 2,
                         "max_new_tokens": 10, "settings": list(s), "prompts": smol_ids})
        request = {
            "models": {"tiny-llama": str(Path(tmp) / "llama"), "smollm2-135m": str(smol_model_dir())},
            "runs": runs,
        }
        req, res = Path(tmp) / "request.json", Path(tmp) / "result.json"
        req.write_text(json.dumps(request))
        subprocess.run([hf4_python, __file__, "--v4", str(req), str(res)], check=True)
        result = json.loads(res.read_text())
    result["checksums"] = {"tiny-llama": checksum(llama, tiny_ids[0]), "smollm2-135m": checksum(smol.model, smol_ids[0])}
    for name, value in result["checksums"].items():  # the v4 run must have used the same weights
        v4 = result["v4_checksums"][name]
        if abs(v4 - value) > 1e-5 * abs(value):
            raise SystemExit(f"{name}: transformers 4 computes different logits ({v4} vs {value})")
    OUT.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {OUT} ({len(result['runs'])} runs)")


def smol_model_dir() -> Path:
    from decodekit.models import resolve

    return resolve("smollm2-135m")  # the converted HF directory in the decodekit cache


def load_v4(path: str):
    """Load a directory saved by transformers 5 with transformers 4: v5 writes ``rope_theta``
    inside ``rope_parameters``, which v4 does not read (it would fall back to 10000)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(path)
    rope = json.loads((Path(path) / "config.json").read_text()).get("rope_parameters") or {}
    if "rope_theta" in rope:
        config.rope_theta = rope["rope_theta"]
    return AutoModelForCausalLM.from_pretrained(path, config=config, torch_dtype=torch.float32).eval()


def run_v4(req_path: str, res_path: str) -> None:
    """HF transformers v4 interpreter: run group beam search for every request."""
    import torch
    import transformers

    assert transformers.__version__.startswith("4."), transformers.__version__
    request = json.loads(Path(req_path).read_text())
    models = {name: load_v4(path) for name, path in request["models"].items()}
    out_runs = []
    for run in request["runs"]:
        model = models[run["model"]]
        k, G, lam, lp, es, nr = run["settings"]
        outputs = []
        for ids in run["prompts"]:
            out = model.generate(
                torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                num_beams=k, num_beam_groups=G, diversity_penalty=float(lam), length_penalty=lp,
                early_stopping=es, num_return_sequences=nr, max_new_tokens=run["max_new_tokens"],
                do_sample=False, eos_token_id=run["eos"], pad_token_id=run["pad"],
                return_dict_in_generate=True, output_scores=True)
            outputs.append({
                "rows": [s[len(ids):].tolist() for s in out.sequences],
                "scores": [float(x) for x in out.sequences_scores],
            })
        out_runs.append({**run, "outputs": outputs})
    first = {name: next(r["prompts"][0] for r in request["runs"] if r["model"] == name) for name in models}
    Path(res_path).write_text(json.dumps({
        "v4_checksums": {name: checksum(models[name], first[name]) for name in models},
        "produced_by": f"transformers {transformers.__version__}, torch {torch.__version__}: "
                       "generate(num_beams, num_beam_groups, diversity_penalty, do_sample=False); "
                       "see make_reference.py",
        "runs": out_runs,
    }))


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--v4":
        run_v4(sys.argv[2], sys.argv[3])
    elif len(sys.argv) == 2:
        prepare(sys.argv[1])
    else:
        sys.exit(__doc__)
