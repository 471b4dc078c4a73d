"""End to end: k distinct sequences, determinism, batches, exact reduction to greedy, masks."""

import pytest

from decodekit import Pipeline, hookimpl


def superposed(model, tok, **opts):
    return Pipeline(model, tokenizer=tok, decoding={"strategy": "superposed", "max_new_tokens": 8, **opts})


PROMPTS = ["hello there", "abc", "the fox jumps", "q?"]


def test_one_draft_without_ngrams_is_greedy(tiny, tok):
    _, model = tiny
    greedy = Pipeline(model, tokenizer=tok, decoding={"max_new_tokens": 8})
    one = superposed(model, tok, num_drafts=1, alpha=0.0)
    for p in PROMPTS:
        assert one.generate(p).token_ids == greedy.generate(p).token_ids


@pytest.mark.parametrize("k", [2, 4])
def test_k_distinct_sequences(tiny, tok, k):
    _, model = tiny
    result = superposed(model, tok, num_drafts=k).generate(PROMPTS)
    for c in result.completions:
        ids = [tuple(s.token_ids) for s in c.sequences]
        assert len(ids) == k and len(set(ids)) == k
        assert all(1 <= len(s) <= 8 for s in ids)
        assert [s.score for s in c.sequences] == sorted((s.score for s in c.sequences), reverse=True)
        assert c.token_ids == list(ids[0])


def test_deterministic_and_batch_equals_one_by_one(tiny, tok):
    _, model = tiny
    pipe = superposed(model, tok, num_drafts=3, corpus="the quick brown fox jumps over the lazy dog")
    seqs = lambda r: [[s.token_ids for s in c.sequences] for c in r.completions]  # noqa: E731
    a, b = seqs(pipe.generate(PROMPTS, seed=1)), seqs(pipe.generate(PROMPTS, seed=2))
    assert a == b  # no randomness: any seed gives the same drafts
    assert a == [seqs(pipe.generate(p))[0] for p in PROMPTS]


class BanLetter:
    """A mask plugin forbidding one token everywhere."""

    def __init__(self, token: int):
        self.token = token

    @hookimpl
    def mask(self, positions, logits):
        allowed = logits.new_ones(logits.shape, dtype=bool)
        allowed[..., self.token] = False
        return allowed


def test_masks_apply_to_every_draft(llama, tok):
    free = superposed(llama, tok, num_drafts=3).generate("hello there").completions[0]
    used = {t for s in free.sequences for t in s.token_ids}
    banned = max(used, key=lambda t: sum(s.token_ids.count(t) for s in free.sequences))
    pipe = Pipeline(llama, tokenizer=tok, decoding={"strategy": "superposed", "num_drafts": 3, "max_new_tokens": 8},
                    plugins=[BanLetter(banned)])
    for s in pipe.generate("hello there").completions[0].sequences:
        assert banned not in s.token_ids


@pytest.mark.embedded
def test_embedded_model_three_drafts_one_pass_per_step():
    pipe = Pipeline("smollm2-135m", decoding={"strategy": "superposed", "num_drafts": 3, "max_new_tokens": 6})
    r = pipe.generate("Write one sentence about the sea.")
    texts = [s.text for s in r.completions[0].sequences]
    assert len(texts) == 3 and len(set(texts)) == 3 and all(texts)
    # the host's prefill, the loop's own prefill, then one pass per further token: 1 + 1 + 5
    assert r.stats.target_passes <= 1 + 1 + 5
