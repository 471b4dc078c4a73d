"""diverse_beam reproduces HF transformers' group beam search.

* Against HF v4.55 ``generate(num_beam_groups=G, diversity_penalty=λ)`` (committed outputs, see
  data/make_reference.py): the tiny random Llama, with EOS rare and frequent, and the embedded model.
* ``num_groups=1`` is plain beam search: the built-in ``beam`` strategy and HF 5's
  ``generate(num_beams=...)``.
"""

from __future__ import annotations

import pytest
import torch

from decodekit import Pipeline


def dbs_pipe(model, tok, k, G, lam, lp=1.0, es=False, nr=1, n=12, plugins=()):
    return Pipeline(model, tokenizer=tok, plugins=list(plugins), decoding={
        "strategy": "diverse_beam", "num_beams": k, "num_groups": G, "diversity_penalty": lam,
        "length_penalty": lp, "early_stopping": es, "num_return_sequences": nr, "max_new_tokens": n})


def as_hf_rows(seqs, eos: list[int], pad: int, width: int) -> list[list[int]]:
    """HF v4 writes a finished hypothesis as its tokens, then eos[0], then padding."""
    rows = []
    for s in seqs:
        t = list(s.token_ids)
        if t and t[-1] in eos:
            t[-1] = eos[0]
        rows.append(t + [pad] * (width - len(t)))
    return rows


def check_run(pipe, run):
    for ids, out in zip(run["prompts"], run["outputs"]):
        seqs = pipe.generate(ids).completions[0].sequences
        width = len(out["rows"][0])
        assert as_hf_rows(seqs, run["eos"], run["pad"], width) == out["rows"], (run["settings"], ids)
        assert [s.score for s in seqs] == pytest.approx(out["scores"], rel=1e-5, abs=1e-5), run["settings"]


def test_matches_hf_v4_group_beam_search_tiny(llama, tok, reference, logits_checksum):
    runs = [r for r in reference["runs"] if r["model"] == "tiny-llama"]
    assert len(runs) == 8
    assert logits_checksum(llama, runs[0]["prompts"][0]) == pytest.approx(reference["checksums"]["tiny-llama"], rel=1e-5)
    old = llama.generation_config.eos_token_id
    try:
        for run in runs:
            llama.generation_config.eos_token_id = run["eos"]
            k, G, lam, lp, es, nr = run["settings"]
            check_run(dbs_pipe(llama, tok, k, G, lam, lp, es, nr, run["max_new_tokens"]), run)
    finally:
        llama.generation_config.eos_token_id = old
    ended = sum(run["eos"][0] in row for run in runs for o in run["outputs"] for row in o["rows"])
    assert ended > 0  # the reference exercises finished (EOS) hypotheses


@pytest.mark.embedded
def test_matches_hf_v4_group_beam_search_embedded(smol, reference, logits_checksum):
    runs = [r for r in reference["runs"] if r["model"] == "smollm2-135m"]
    assert runs and sorted(smol.eos_token_ids()) == runs[0]["eos"]
    assert logits_checksum(smol.model, runs[0]["prompts"][0]) == pytest.approx(
        reference["checksums"]["smollm2-135m"], rel=1e-5)
    for run in runs:
        k, G, lam, lp, es, nr = run["settings"]
        pipe = Pipeline(smol.model, tokenizer=smol.tokenizer, decoding={
            "strategy": "diverse_beam", "num_beams": k, "num_groups": G, "diversity_penalty": lam,
            "length_penalty": lp, "early_stopping": es, "num_return_sequences": nr,
            "max_new_tokens": run["max_new_tokens"]})
        check_run(pipe, run)


SETTINGS = [(4, 2, 1.0, False), (3, 3, 2.0, "never"), (5, 1, 0.5, True)]  # (k, nr, lp, es)


@pytest.mark.parametrize("k,nr,lp,es", SETTINGS)
def test_one_group_is_plain_beam_search(tiny, tok, k, nr, lp, es):
    arch, model = tiny
    dbs = dbs_pipe(model, tok, k, 1, 1.0, lp, es, nr, n=12)
    beam = Pipeline(model, tokenizer=tok, decoding={
        "strategy": "beam", "num_beams": k, "num_return_sequences": nr, "length_penalty": lp,
        "early_stopping": es, "max_new_tokens": 12})
    for p in ["hello world", "ab", "the quick brown fox"]:
        ids = dbs.encode(p)
        got = dbs.generate(ids).completions[0].sequences
        want = beam.generate(ids).completions[0].sequences
        assert [s.token_ids for s in got] == [s.token_ids for s in want], (arch, p)
        assert [s.score for s in got] == pytest.approx([s.score for s in want], rel=1e-5)
        out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             num_beams=k, num_return_sequences=nr, length_penalty=lp, early_stopping=es,
                             max_new_tokens=12, do_sample=False, return_dict_in_generate=True, output_scores=True)
        lengths = (out.beam_indices != -1).sum(dim=1).tolist()
        hf = [s[len(ids):len(ids) + m].tolist() for s, m in zip(out.sequences, lengths)]
        assert [s.token_ids for s in got] == hf, (arch, p)
        assert [s.score for s in got] == pytest.approx(out.sequences_scores.tolist(), rel=1e-5)


def test_batch_equals_one_by_one(llama, tok):
    pipe = dbs_pipe(llama, tok, 6, 3, 1.0, nr=6, n=10)
    prompts = [pipe.encode(p) for p in ["a", "the quick brown fox", "hello world"]]
    together = pipe.generate(prompts).completions
    for ids, c in zip(prompts, together):
        alone = pipe.generate(ids).completions[0]
        assert [s.token_ids for s in c.sequences] == [s.token_ids for s in alone.sequences]
        assert [s.score for s in c.sequences] == pytest.approx([s.score for s in alone.sequences], abs=1e-4)
