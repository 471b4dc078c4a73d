"""The built-in ``beam`` strategy reproduces HF transformers' ``generate(num_beams=...)`` exactly.

Sequences are compared token for token and scores (``sequences_scores``) to float32 precision,
on the tiny random Llama / GPT-2 / Qwen2 models and on the embedded SmolLM2 model.
"""

from __future__ import annotations

import pytest
import torch

from decodekit import ConfigError, Pipeline, TokenState, hookimpl
from decodekit.builtins.beam import Beam, BeamOptions, candidate_count, replace_eos
from decodekit.plugins import get_registry

SETTINGS = [  # (num_beams, num_return_sequences, length_penalty, early_stopping)
    (4, 2, 1.0, False),
    (3, 3, 2.0, "never"),
    (5, 1, -0.5, True),
    (2, 2, 0.0, False),
    (4, 4, 0.5, "never"),
]
PROMPTS = ["hello world", "ab", "the quick brown fox"]


def hf_beam(model, prompts: list[list[int]], n: int, k: int, nr: int, lp: float, es, eos=None, processor=None):
    """HF generate(num_beams=k) on left-padded prompts: per prompt, [(new tokens, score)] best first."""
    width = max(map(len, prompts))
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
    attn = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    extra = {"eos_token_id": eos} if eos is not None else {}
    if processor is not None:
        from transformers import LogitsProcessorList

        extra["logits_processor"] = LogitsProcessorList([processor])
    out = model.generate(ids, attention_mask=attn, num_beams=k, num_return_sequences=nr, length_penalty=lp,
                         early_stopping=es, max_new_tokens=n, do_sample=False, return_dict_in_generate=True,
                         output_scores=True, **extra)
    lengths = (out.beam_indices != -1).sum(dim=1).tolist()  # generated length of each sequence
    seqs = [(s[width:width + m].tolist(), float(sc)) for s, m, sc in zip(out.sequences, lengths, out.sequences_scores)]
    return [seqs[i * nr:(i + 1) * nr] for i in range(len(prompts))]


def ours(pipe: Pipeline, prompts: list[list[int]], **overrides):
    res = pipe.generate(prompts, **overrides)
    return [[(s.token_ids, s.score) for s in c.sequences] for c in res.completions]


def assert_same(a, b, where):
    assert len(a) == len(b), where
    for pa, pb in zip(a, b):
        assert [t for t, _ in pa] == [t for t, _ in pb], where
        assert [s for _, s in pa] == pytest.approx([s for _, s in pb], rel=1e-5, abs=1e-5), where


def beam_pipe(model, tok, k, nr=1, lp=1.0, es=False, n=12, plugins=()):
    return Pipeline(model, tokenizer=tok, plugins=list(plugins), decoding={
        "strategy": "beam", "num_beams": k, "num_return_sequences": nr, "length_penalty": lp,
        "early_stopping": es, "max_new_tokens": n})


def test_beam_is_a_registered_strategy():
    info = get_registry(refresh=True).plugins["beam"]
    assert info.kind == "strategy" and info.options is BeamOptions
    assert {"start", "verify", "finish"} <= set(info.hooks)


@pytest.mark.parametrize("k,nr,lp,es", SETTINGS)
def test_beam_matches_hf_generate_tiny(tiny, tok, k, nr, lp, es):
    arch, model = tiny
    pipe = beam_pipe(model, tok, k, nr, lp, es)
    for p in PROMPTS:
        ids = [pipe.encode(p)]
        assert_same(ours(pipe, ids), hf_beam(model, ids, 12, k, nr, lp, es), (arch, p))


@pytest.mark.parametrize("k,nr,lp,es", SETTINGS)
def test_beam_matches_hf_with_frequent_eos(llama, tok, k, nr, lp, es):
    """Make two frequent tokens end the sequence, so finished hypotheses, several EOS ids
    (K = 3k candidates) and every early-stopping rule come into play."""
    base = beam_pipe(llama, tok, 1, n=16)
    common = [t for t in base.generate(base.encode("hello world")).token_ids if t != 1]
    eos = [1, common[2], common[5]]
    old = llama.generation_config.eos_token_id
    llama.generation_config.eos_token_id = eos
    try:
        pipe = beam_pipe(llama, tok, k, nr, lp, es, n=16)
        assert pipe.eos_token_ids() == frozenset(eos)
        ended = 0
        for p in PROMPTS:
            ids = [pipe.encode(p)]
            got, want = ours(pipe, ids), hf_beam(llama, ids, 16, k, nr, lp, es, eos=eos)
            assert_same(got, want, p)
            ended += sum(toks[-1] in eos for toks, _ in got[0])
        assert ended > 0, "the test should exercise finished (EOS) hypotheses"
    finally:
        llama.generation_config.eos_token_id = old


def test_batch_equals_one_by_one(llama, tok):
    pipe = beam_pipe(llama, tok, 3, nr=3, lp=1.0, es=False, n=10)
    prompts = [pipe.encode(p) for p in ["a", "the quick brown fox", "hello world", "1, 2, 3"]]
    together = ours(pipe, prompts)
    for p, got in zip(prompts, together):
        assert_same([got], ours(pipe, [p]), p)


def test_batch_matches_hf_batch(tiny, tok):
    arch, model = tiny
    pipe = beam_pipe(model, tok, 3, nr=2, n=10)
    prompts = [pipe.encode(p) for p in ["ab", "the quick brown fox", "hello world"]]
    assert_same(ours(pipe, prompts), hf_beam(model, prompts, 10, 3, 2, 1.0, False), arch)


def test_one_beam_is_greedy_as_in_hf(tiny, tok):
    """HF runs greedy search for num_beams=1; so does beam, EOS included (two frequent tokens end
    the sequence here, so some outputs stop early)."""
    arch, model = tiny
    greedy = Pipeline(model, tokenizer=tok, decoding={"max_new_tokens": 16})
    common = [t for t in greedy.generate(greedy.encode("hello world")).token_ids if t != 1]
    old = model.generation_config.eos_token_id
    model.generation_config.eos_token_id = [1, common[3], common[6]]
    try:
        pipe = beam_pipe(model, tok, 1, n=16)
        for p in PROMPTS + ["hello world"]:
            ids = pipe.encode(p)
            res = pipe.generate(ids)
            assert res.token_ids == greedy.generate(ids).token_ids, (arch, p)
            out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                 num_beams=1, max_new_tokens=16, do_sample=False, pad_token_id=0)
            assert res.token_ids == out[0, len(ids):len(ids) + len(res.token_ids)].tolist(), (arch, p)
            with torch.no_grad():
                logp = torch.log_softmax(model(torch.tensor([ids + res.token_ids])).logits[0].float(), -1)
            total = sum(float(logp[len(ids) - 1 + i, t]) for i, t in enumerate(res.token_ids))
            assert res.completions[0].sequences[0].score == pytest.approx(total / len(res.token_ids), abs=1e-4)
    finally:
        model.generation_config.eos_token_id = old


def test_a_dead_beam_never_emits_eos():
    lp = torch.tensor([0.0, -1.0, -2.0, -0.5])
    assert replace_eos(lp, 0, {0, 3}) == 1  # EOS 0 and 3 excluded: the best other token
    assert replace_eos(lp, 2, {0}) == 2  # not an EOS: unchanged


def test_candidate_count():
    assert candidate_count(4, 0) == 8 and candidate_count(4, 1) == 8 and candidate_count(4, 2) == 12


# -- composition with a mask plugin -------------------------------------------------------------


class AlternateParity(TokenState):
    """Mask: after a generated token of parity q the next token must have the other parity.

    Its state (parity of the last generated token) is a TokenState, so the host must reorder it
    with the beams: a beam that inherits another's history inherits its constraint too.
    """

    name = "alternate_parity"

    def initial_state(self, prompt_ids):
        return None

    def next_state(self, state, token):
        return token % 2

    @hookimpl
    def mask(self, positions, logits):
        V = logits.shape[-1]
        parity = torch.arange(V) % 2
        allowed = torch.ones(logits.shape, dtype=torch.bool)
        for i, per_pos in enumerate(positions.states(self)):
            for j, state in enumerate(per_pos):
                if state is not None:
                    allowed[i, j] = parity != state
        return allowed.to(logits.device)


class HFAlternateParity:
    """The same constraint as an HF logits processor: mask, then renormalise (decodekit's p' is
    log_softmax of the masked logits; HF's processors see log-probabilities, so renormalising
    after masking gives the same distribution)."""

    def __init__(self, prompt_width: int):
        self.width = prompt_width

    def __call__(self, input_ids, scores):
        if input_ids.shape[1] == self.width:
            return scores
        last = input_ids[:, -1] % 2  # [N]
        parity = torch.arange(scores.shape[-1]) % 2  # [V]
        scores = scores.masked_fill(parity[None, :] == last[:, None], float("-inf"))
        return torch.log_softmax(scores, dim=-1)


@pytest.mark.parametrize("k,nr", [(3, 3), (4, 2)])
def test_beam_composes_with_a_stateful_mask(tiny, tok, k, nr):
    arch, model = tiny
    pipe = beam_pipe(model, tok, k, nr, n=10, plugins=[AlternateParity()])
    for p in ["hello world", "ab"]:
        ids = [pipe.encode(p)]
        got = ours(pipe, ids)
        for toks, _ in got[0]:  # every returned beam respects the mask
            assert all(a % 2 != b % 2 for a, b in zip(toks, toks[1:])), (arch, toks)
        want = hf_beam(model, ids, 10, k, nr, 1.0, False, processor=HFAlternateParity(len(ids[0])))
        assert [[t for t, _ in s] for s in got] == [[t for t, _ in s] for s in want], (arch, p)
        assert [s for _, s in got[0]] == pytest.approx([s for _, s in want[0]], abs=1e-4)


# -- options and errors -------------------------------------------------------------------------


def test_bad_options_are_config_errors(llama, tok):
    with pytest.raises(ConfigError, match="num_return_sequences"):
        beam_pipe(llama, tok, 2, nr=3)
    with pytest.raises(ConfigError, match="num_beam"):
        Pipeline(llama, tokenizer=tok, decoding={"strategy": "beam", "num_beam": 2})
    with pytest.raises(ConfigError, match="early_stopping"):
        Pipeline(llama, tokenizer=tok, decoding={"strategy": "beam", "early_stopping": "sometimes"})
    pipe = beam_pipe(llama, tok, 2)
    with pytest.raises(ConfigError, match="stop"):
        pipe.generate("ab", stop=["x"])


def test_result_reports_sequences(llama, tok):
    pipe = beam_pipe(llama, tok, 3, nr=2, n=8)
    res = pipe.generate("ab", raw=True)
    c = res.completions[0]
    assert len(c.sequences) == 2 and c.token_ids == c.sequences[0].token_ids
    assert c.sequences[0].score >= c.sequences[1].score
    assert c.text == tok.decode(c.token_ids, skip_special_tokens=True)
    assert "sequences" in res.as_dict()
    assert Beam(BeamOptions(num_beams=5)).rows_per_prompt == 5


# -- the embedded model -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smol():
    return Pipeline("smollm2-135m", decoding={"strategy": "beam", "num_beams": 3, "max_new_tokens": 8})


@pytest.mark.embedded
@pytest.mark.parametrize("prompt,k,nr,lp,es", [
    ("What is the capital of France?", 3, 2, 1.0, False),
    ("Write a haiku about the sea.", 4, 3, 2.0, "never"),
])
def test_beam_matches_hf_generate_embedded(smol, prompt, k, nr, lp, es):
    ids = [smol.encode(prompt)]
    got = ours(smol, ids, num_beams=k, num_return_sequences=nr, length_penalty=lp, early_stopping=es)
    want = hf_beam(smol.model, ids, 8, k, nr, lp, es, eos=sorted(smol.eos_token_ids()))
    assert_same(got, want, prompt)
