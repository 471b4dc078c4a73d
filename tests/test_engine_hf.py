"""The engine reproduces HF transformers' generate() token for token (greedy) on real and tiny models."""

from __future__ import annotations

import pytest
import torch

from decodekit import Pipeline

PROMPTS = ["hello world", "a", "the quick brown fox jumps over", "1, 2, 3, 4,"]
CHAT_PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "List three prime numbers.",
    "Translate 'good morning' into Spanish.",
    "Explain recursion in one sentence.",
]


def hf_greedy(model, ids: list[int], n: int) -> list[int]:
    out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                         max_new_tokens=n, do_sample=False)
    return out[0, len(ids):].tolist()


def test_greedy_matches_hf_generate_tiny(tiny, tok):
    arch, model = tiny
    pipe = Pipeline(model, tokenizer=tok, decoding={"max_new_tokens": 24})
    for p in PROMPTS:
        ids = pipe.encode(p)
        ours = pipe.generate(ids).token_ids
        assert ours == hf_greedy(model, ids, 24), (arch, p)


@pytest.mark.embedded
def test_greedy_matches_hf_generate_embedded(embedded):
    for p in CHAT_PROMPTS:
        ids = embedded.encode(p)
        ours = embedded.generate(ids, max_new_tokens=20).token_ids
        assert ours == hf_greedy(embedded.model, ids, 20), p


@pytest.mark.embedded
def test_embedded_model_answers_sensibly(embedded):
    res = embedded.generate("What is the capital of France?", max_new_tokens=12)
    assert "Paris" in res.text
    assert res.stats.new_tokens == len(res.token_ids)
    assert res.stats.target_passes == len(res.token_ids)


def test_stops_at_eos_and_reports_reason(llama, tok):
    pipe = Pipeline(llama, tokenizer=tok, decoding={"max_new_tokens": 200})
    ids = pipe.encode("ab")
    hf = hf_greedy(llama, ids, 200)
    res = pipe.generate(ids)
    assert res.token_ids == hf
    if 1 in hf:  # EOS id of the tiny tokenizer
        assert res.completions[0].finish_reason == "eos" and res.token_ids[-1] == 1
    else:
        assert res.completions[0].finish_reason == "length"


def test_ignore_eos_runs_to_the_budget(llama, tok):
    pipe = Pipeline(llama, tokenizer=tok, decoding={"max_new_tokens": 40, "ignore_eos": True})
    assert len(pipe.generate("zz").token_ids) == 40


def test_stop_strings_end_generation(llama, tok):
    pipe = Pipeline(llama, tokenizer=tok, decoding={"max_new_tokens": 30, "ignore_eos": True})
    full = pipe.generate("hello").text
    stop = full[5:7]
    res = pipe.generate("hello", stop=[stop])
    assert res.completions[0].finish_reason == "stop"
    assert stop in res.text and full.startswith(res.text)
    assert stop not in res.text[:-1] or res.text.index(stop) + len(stop) >= len(res.text) - 1


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_runs_and_matches_hf(tok, dtype):
    from decodekit.testing import tiny_model

    model = tiny_model("llama", tok).to(dtype)
    pipe = Pipeline(model, tokenizer=tok, decoding={"max_new_tokens": 12})
    ids = pipe.encode("hello")
    assert pipe.generate(ids).token_ids == hf_greedy(model, ids, 12)
