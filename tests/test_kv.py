"""CachedLM: tree attention, holes and rollback give the logits of the plain sequences."""

from __future__ import annotations

import torch

from decodekit.kv import CachedLM
from decodekit.types import Draft


def plain_logits(model, ids: list[int]) -> torch.Tensor:
    """[len(ids), V] logits of one uncached forward."""
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0].float()


def test_tree_forward_equals_each_path_run_alone(tiny):
    _, model = tiny
    prompt = [5, 6, 7, 8]
    # root children 10 and 11; 12 under 10; 13 under 12; 14 under 11
    draft = Draft([10, 11, 12, 13, 14], [-1, -1, 0, 2, 1])
    lm = CachedLM(model, 1)
    lm.forward([prompt[:-1]])
    lm.commit([[]])
    got = lm.forward([[prompt[-1]]], [draft])[0]  # [6, V]
    for j in range(len(draft) + 1):
        path = [] if j == 0 else [draft.tokens[k] for k in draft.path(j - 1)]
        want = plain_logits(model, prompt + path)[-1]
        torch.testing.assert_close(got[j], want, atol=1e-4, rtol=1e-4)


def test_commit_keeps_the_accepted_path_and_drops_the_rest(tiny):
    _, model = tiny
    prompt = [5, 6, 7]
    draft = Draft([10, 11, 12, 13], [-1, -1, 1, 2])
    lm = CachedLM(model, 1)
    lm.forward([prompt], [draft])
    lm.commit([[1, 2]])  # keep 11 -> 12; 10 and 13 are dropped
    # 11 and 12 are packed over 10's column: one row never keeps a hole
    assert lm.col_valid.shape[1] == 5 and not lm._holes
    got = lm.forward([[20]])[0, 0]
    want = plain_logits(model, prompt + [11, 12, 20])[-1]
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_packed_tree_steps_keep_the_cache_of_the_committed_text(tiny):
    """Tree steps whose accepted paths skip siblings, in a batch with left-padded prompts, then a
    rollback: each row's logits stay those of its plain sequence, and the cache holds no column
    that no row needs."""
    _, model = tiny
    prompts = [[5, 6, 7, 8], [9]]
    tree = Draft([10, 11, 12, 13, 14], [-1, -1, 1, 1, 3])  # 10 | 11 -> 12, 11 -> 13 -> 14
    lm = CachedLM(model, 2)
    lm.forward(prompts, [tree, tree])
    lm.commit([[1, 3, 4], [1]])  # row 0: 11 13 14; row 1: 11
    texts = [prompts[0] + [11, 13, 14], prompts[1] + [11]]
    assert lm.col_valid.shape[1] == max(len(t) for t in texts)
    assert lm.col_valid.sum(dim=1).tolist() == [len(t) for t in texts]
    got = lm.forward([[20], [21]], [Draft([22, 23], [-1, -1]), None])
    texts = [texts[0] + [20], texts[1] + [21]]
    torch.testing.assert_close(got[0, 0], plain_logits(model, texts[0])[-1], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got[0, 2], plain_logits(model, texts[0] + [23])[-1], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got[1, 0], plain_logits(model, texts[1])[-1], atol=1e-4, rtol=1e-4)
    lm.commit([[1], []])  # row 0 keeps 23, not 22
    texts[0].append(23)
    lm.rollback([len(texts[0]) - 2, len(texts[1])])  # row 0 forgets 20 and 23
    texts[0] = texts[0][:-2]
    got = lm.forward([[30], [31]])
    torch.testing.assert_close(got[0, 0], plain_logits(model, texts[0] + [30])[-1], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got[1, 0], plain_logits(model, texts[1] + [31])[-1], atol=1e-4, rtol=1e-4)


def test_batch_rows_with_different_lengths_and_acceptance(tiny):
    _, model = tiny
    prompts = [[5, 6, 7, 8, 9], [4, 4]]
    drafts = [Draft.chain([10, 11, 12]), Draft.chain([13])]
    lm = CachedLM(model, 2)
    lm.forward(prompts, drafts)
    lm.commit([[0], []])  # row 0 keeps 10; row 1 keeps nothing
    got = lm.forward([[30], [31]], [Draft.chain([32]), None])
    torch.testing.assert_close(got[0, 0], plain_logits(model, prompts[0] + [10, 30])[-1], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got[0, 1], plain_logits(model, prompts[0] + [10, 30, 32])[-1], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got[1, 0], plain_logits(model, prompts[1] + [31])[-1], atol=1e-4, rtol=1e-4)


def test_rollback_forgets_tokens(tiny):
    _, model = tiny
    lm = CachedLM(model, 2)
    lm.forward([[5, 6, 7], [8, 9, 10]])
    lm.commit([[], []])
    lm.forward([[11], [12]])
    lm.commit([[], []])
    lm.rollback([2, 4])  # row 0 back to [5, 6]; row 1 keeps all four
    got = lm.forward([[20], [21]])
    torch.testing.assert_close(got[0, 0], plain_logits(model, [5, 6, 20])[-1], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got[1, 0], plain_logits(model, [8, 9, 10, 12, 21])[-1], atol=1e-4, rtol=1e-4)


def test_reorder_copies_rows(tiny):
    _, model = tiny
    lm = CachedLM(model, 2)
    lm.forward([[5, 6], [7, 8]])
    lm.commit([[], []], source_rows=[1, 1])
    got = lm.forward([[9], [10]])
    torch.testing.assert_close(got[0, 0], plain_logits(model, [7, 8, 9])[-1], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got[1, 0], plain_logits(model, [7, 8, 10])[-1], atol=1e-4, rtol=1e-4)
