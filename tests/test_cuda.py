"""The engine's exactness checks, run on a CUDA device (skipped where there is none).

On the GPU the same promises must hold as on the CPU: greedy equals HF ``generate`` token for token,
beam search equals HF's beam search, a batch equals its rows run one by one, a seed reproduces a
sample, and the speculative and guidance plugins stay exact. float32 is the exactness reference; in
bfloat16 / float16 a pass over several tokens (a draft) may use other kernels than a one-token
pass, so those tests compare against HF in the same dtype, where both run the same passes.

CI has no GPU; run these on a CUDA machine with ``pytest tests/test_cuda.py``. Another device can
be named with ``DECODEKIT_TEST_DEVICE`` (``cpu`` runs the same checks here, which is how the tests
themselves are checked without a GPU).
"""

from __future__ import annotations

import os

import pytest
import torch

from decodekit import Pipeline
from decodekit.testing import tiny_model

DEVICE = os.environ.get("DECODEKIT_TEST_DEVICE", "cuda")
pytestmark = pytest.mark.skipif(DEVICE.startswith("cuda") and not torch.cuda.is_available(),
                                reason="needs a CUDA device")

PROMPTS = ["hello world", "a", "the quick brown fox jumps over", "abc abc abc abc abc"]
CHAT = ["What is the capital of France?", "Write a haiku about the sea.", "Explain recursion in one sentence."]


def hf_greedy(model, ids: list[int], n: int, **kw) -> list[int]:
    x = torch.tensor([ids], device=model.device)
    out = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=n, do_sample=False, **kw)
    return out[0, len(ids):].tolist()


@pytest.fixture(scope="module", params=["llama", "gpt2", "qwen2"])
def tiny_cuda(request, tok):
    return request.param, tiny_model(request.param, tok).to(DEVICE)


@pytest.fixture(scope="module")
def llama_cuda(tok):
    return tiny_model("llama", tok).to(DEVICE)


def test_pipeline_runs_on_the_models_device(llama_cuda, tok):
    pipe = Pipeline(llama_cuda, tokenizer=tok, decoding={"max_new_tokens": 4, "ignore_eos": True})
    assert pipe.device.type == torch.device(DEVICE).type
    assert len(pipe.generate("hello").token_ids) == 4


def test_greedy_matches_hf_generate(tiny_cuda, tok):
    arch, model = tiny_cuda
    pipe = Pipeline(model, tokenizer=tok, decoding={"max_new_tokens": 24})
    for p in PROMPTS:
        ids = pipe.encode(p)
        assert pipe.generate(ids).token_ids == hf_greedy(model, ids, 24), (arch, p)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_matches_hf_generate(tok, dtype):
    model = tiny_model("llama", tok).to(DEVICE, dtype)
    pipe = Pipeline(model, tokenizer=tok, decoding={"max_new_tokens": 16})
    for p in PROMPTS:
        ids = pipe.encode(p)
        assert pipe.generate(ids).token_ids == hf_greedy(model, ids, 16), (dtype, p)


def test_beam_matches_hf_beam_search(llama_cuda, tok):
    pipe = Pipeline(llama_cuda, tokenizer=tok, decoding={
        "strategy": "beam", "num_beams": 4, "num_return_sequences": 2, "max_new_tokens": 12})
    for p in PROMPTS:
        ids = pipe.encode(p)
        x = torch.tensor([ids], device=DEVICE)
        hf = llama_cuda.generate(x, attention_mask=torch.ones_like(x), num_beams=4, num_return_sequences=2,
                                 max_new_tokens=12, do_sample=False, return_dict_in_generate=True,
                                 output_scores=True)
        lengths = (hf.beam_indices != -1).sum(dim=1).tolist()
        want = [(s[len(ids):len(ids) + m].tolist(), float(sc))
                for s, m, sc in zip(hf.sequences, lengths, hf.sequences_scores)]
        got = [(s.token_ids, s.score) for s in pipe.generate(ids).completions[0].sequences]
        assert [t for t, _ in got] == [t for t, _ in want], p
        assert [s for _, s in got] == pytest.approx([s for _, s in want], rel=1e-4, abs=1e-4), p


def test_batch_equals_rows(llama_cuda, tok):
    for decoding in ({"max_new_tokens": 20}, {"strategy": "sample", "seed": 3, "max_new_tokens": 20}):
        pipe = Pipeline(llama_cuda, tokenizer=tok, decoding=decoding)
        batch = [c.token_ids for c in pipe.generate(PROMPTS).completions]
        assert batch == [pipe.generate(p).token_ids for p in PROMPTS], decoding


def test_seed_reproduces_a_sample_and_another_seed_differs(llama_cuda, tok):
    pipe = Pipeline(llama_cuda, tokenizer=tok, decoding={"strategy": "sample", "max_new_tokens": 32})
    a, b = (pipe.generate("hello", seed=7).token_ids for _ in range(2))
    assert a == b
    assert pipe.generate("hello", seed=8).token_ids != a


@pytest.mark.parametrize("proposer", ["prompt_lookup", "token_recycling", "layer_skip"])
def test_speculative_greedy_is_token_identical(llama_cuda, tok, proposer):
    decoding = {"max_new_tokens": 24}
    want = [c.token_ids for c in Pipeline(llama_cuda, tokenizer=tok, decoding=decoding).generate(PROMPTS).completions]
    opts = {"name": "speculative", "proposer": proposer, "verify_costs": {1: 1.0, 256: 1.0}}
    if proposer == "layer_skip":
        opts["skip_layers"] = [1]
    pipe = Pipeline(llama_cuda, tokenizer=tok, decoding=decoding, plugins=[opts])
    for _ in range(2):  # the second call starts from what the first learned
        res = pipe.generate(PROMPTS)
        assert [c.token_ids for c in res.completions] == want, proposer
    assert res.stats.drafted_tokens > 0


@pytest.mark.parametrize("gamma", [1.5, 3.0])
def test_cfg_matches_hf_guidance_scale(llama_cuda, tok, gamma):
    pipe = Pipeline(llama_cuda, tokenizer=tok, decoding={"max_new_tokens": 16},
                    plugins=[{"name": "guidance", "guidance_scale": gamma}])
    for p in PROMPTS:
        ids = pipe.encode(p)
        assert pipe.generate(ids).token_ids == hf_greedy(llama_cuda, ids, 16, guidance_scale=gamma), p


@pytest.mark.embedded
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_embedded_greedy_matches_hf_generate(dtype):
    pipe = Pipeline("smollm2-135m", device=DEVICE, dtype=dtype, decoding={"max_new_tokens": 32})
    for p in CHAT:
        ids = pipe.encode(p)
        assert pipe.generate(ids).token_ids == hf_greedy(pipe.model, ids, 32), (dtype, p)


@pytest.mark.embedded
@pytest.mark.parametrize("proposer", ["prompt_lookup", "token_recycling"])
def test_embedded_speculative_is_token_identical_in_float32(proposer):
    decoding = {"max_new_tokens": 48}
    plain = Pipeline("smollm2-135m", device=DEVICE, dtype="float32", decoding=decoding)
    pipe = Pipeline("smollm2-135m", device=DEVICE, dtype="float32", decoding=decoding,
                    plugins=[{"name": "speculative", "proposer": proposer}])
    for p in CHAT:
        assert pipe.generate(p).token_ids == plain.generate(p).token_ids, (proposer, p)
