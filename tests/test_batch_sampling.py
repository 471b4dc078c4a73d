"""Batches equal single calls; seeded sampling repeats; the warpers equal HF's; drafts keep
sampling exact under a mask and a rescorer (chi-square at significance 0.001)."""

from __future__ import annotations

import pytest
import torch
from scipy.stats import chi2_contingency

from decodekit import ConfigError, Draft, Pipeline, hookimpl
from decodekit.builtins.sampling import MinP, Temperature, TopK, TopP
from decodekit.testing import tiny_model, tiny_tokenizer

PROMPTS = ["hello world", "a", "the quick brown fox", "zz"]


@pytest.mark.parametrize("decoding", [
    {"strategy": "greedy"},
    {"strategy": "sample", "temperature": 0.9, "top_p": 0.9, "seed": 5},
], ids=["greedy", "sample"])
def test_batch_equals_one_by_one(tiny, tok, decoding):
    _, model = tiny
    pipe = Pipeline(model, tokenizer=tok, decoding={**decoding, "max_new_tokens": 25})
    batch = pipe.generate(PROMPTS)
    singles = [pipe.generate(p).token_ids for p in PROMPTS]
    assert [c.token_ids for c in batch.completions] == singles


def test_a_seed_per_prompt_equals_the_prompts_run_alone(llama, tok):
    pipe = Pipeline(llama, tokenizer=tok, decoding={"strategy": "sample", "max_new_tokens": 20})
    prompts, seeds = ["hello", "hello", "abc"], [3, 4, 3]
    batch = [c.token_ids for c in pipe.generate(prompts, seed=seeds).completions]
    assert batch == [pipe.generate(p, seed=s).token_ids for p, s in zip(prompts, seeds)]
    assert batch[0] != batch[1]  # same prompt, other seed
    beam = Pipeline(llama, tokenizer=tok, decoding={"strategy": "beam", "num_beams": 2, "max_new_tokens": 6})
    assert len(beam.generate(prompts, seed=seeds).completions) == 3  # rows of a prompt share its seed


def test_a_seed_list_of_the_wrong_length_is_refused(llama, tok):
    pipe = Pipeline(llama, tokenizer=tok, decoding={"strategy": "sample", "max_new_tokens": 4})
    with pytest.raises(ConfigError, match="2 seeds for 3 prompt"):
        pipe.generate(["a", "b", "c"], seed=[1, 2])


def test_seeded_sampling_repeats_and_seeds_differ(llama, tok):
    pipe = Pipeline(llama, tokenizer=tok, decoding={"strategy": "sample", "max_new_tokens": 30, "seed": 0})
    a, b = pipe.generate("hello"), pipe.generate("hello")
    assert a.token_ids == b.token_ids
    others = {tuple(pipe.generate("hello", seed=s).token_ids) for s in range(1, 6)}
    assert len(others) > 1


def test_overrides_do_not_leak_between_calls(llama, tok):
    pipe = Pipeline(llama, tokenizer=tok, decoding={"max_new_tokens": 10})
    assert len(pipe.generate("hi", max_new_tokens=3, ignore_eos=True).token_ids) == 3
    assert pipe.generate("hi").stats.new_tokens <= 10
    assert pipe.config.decoding.max_new_tokens == 10


@pytest.mark.parametrize("name,ours,theirs", [
    ("temperature", Temperature(0.7), "TemperatureLogitsWarper(0.7)"),
    ("top_k", TopK(5), "TopKLogitsWarper(top_k=5)"),
    ("top_p", TopP(0.8), "TopPLogitsWarper(top_p=0.8)"),
    ("min_p", MinP(0.1), "MinPLogitsWarper(min_p=0.1)"),
])
def test_warpers_match_hf(name, ours, theirs):
    from transformers.generation import logits_process as lp

    hf = eval("lp." + theirs)
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 50, generator=g) * 3
    want = hf(torch.zeros(3, 1, dtype=torch.long), logits.clone())
    got = ours(logits.clone())
    assert torch.equal(torch.isinf(got), torch.isinf(want)), name
    torch.testing.assert_close(got[~torch.isinf(got)], want[~torch.isinf(want)])


def test_warper_arguments_are_checked():
    with pytest.raises(ValueError, match="temperature"):
        Temperature(0)
    with pytest.raises(ValueError, match="top_p"):
        TopP(1.5)
    with pytest.raises(ValueError, match="top_k"):
        TopK(0)


# -- exactness of drafts under a mask and a rescorer, end to end ------------------------------

class BanToken:
    """Mask: never token ``ban``."""

    name = "ban"

    def __init__(self, ban: int):
        self.ban = ban

    @hookimpl
    def mask(self, logits):
        m = torch.ones_like(logits, dtype=torch.bool)
        m[..., self.ban] = False
        return m


class Bias:
    """Rescore: add a bias depending on the previous token (so it varies along a draft)."""

    name = "bias"

    @hookimpl
    def rescore(self, positions, logits):
        out = logits.clone()
        for i in range(len(positions)):
            for j in range(positions.length(i)):
                prev = positions.prefix(i, j)[-1]
                out[i, j, (prev * 3) % logits.shape[-1]] += 1.0
        return out


class TreeGuesser:
    """Proposes a fixed-shape tree of guesses: two root children, a grandchild under the first."""

    name = "guesser"

    def __init__(self, vocab: list[int]):
        self.vocab = vocab

    @hookimpl
    def propose(self, generation):
        drafts = []
        for b in range(generation.num_rows):
            last = generation.tokens[b][-1]
            a, c = self.vocab[last % len(self.vocab)], self.vocab[(last + 1) % len(self.vocab)]
            drafts.append(Draft([a, c, a], [-1, -1, 0]))
        return drafts


def sample_counts(pipe: Pipeline, n: int) -> tuple[dict[tuple[int, ...], int], int]:
    """Counts of each generated sequence over ``n`` seeds, and the draft tokens accepted in all."""
    counts: dict[tuple[int, ...], int] = {}
    accepted = 0
    prompt = pipe.encode("ab")
    for seed in range(n):
        res = pipe.generate(prompt, seed=seed)
        key = tuple(res.token_ids)
        counts[key] = counts.get(key, 0) + 1
        accepted += res.stats.accepted_draft_tokens
    return counts, accepted


def test_tree_drafts_keep_sampling_exact_with_mask_and_rescore():
    tok = tiny_tokenizer(chars="ab")  # ids 0-3 special, 4 'a', 5 'b'
    model = tiny_model("llama", tok, init_range=0.5, seed=3)
    decoding = {"strategy": "sample", "max_new_tokens": 3, "ignore_eos": True, "temperature": 1.2}
    plain = Pipeline(model, tokenizer=tok, decoding=decoding, plugins=[Bias(), BanToken(3)])
    spec = Pipeline(model, tokenizer=tok, decoding=decoding, plugins=[TreeGuesser([4, 5, 1, 0]), Bias(), BanToken(3)])
    n = 1500
    (a, _), (b, accepted) = sample_counts(plain, n), sample_counts(spec, n)
    assert accepted > n // 4  # the drafts were really exercised
    keys = sorted(set(a) | set(b))
    assert all(3 not in k for k in keys)  # the mask holds
    table = [[a.get(k, 0) for k in keys], [b.get(k, 0) for k in keys]]
    assert chi2_contingency(table).pvalue > 1e-3
