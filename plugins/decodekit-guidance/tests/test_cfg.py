"""Classifier-free guidance: token-identical to HF ``generate(guidance_scale=γ, negative_prompt_ids=...)``,
unchanged by speculative decoding (chains and trees), batches equal singles, composes with a mask."""

from __future__ import annotations

import pytest
import torch

from decodekit import Pipeline

PROMPTS = ["hello world", "the quick brown fox", "1, 2, 3,"]
GAMMAS = [0.0, 1.5, 3.0]
NEGATIVES = [None, "a dull sentence"]


def hf_cfg(model, ids: list[int], n: int, gamma: float, negative: list[int] | None) -> list[int]:
    """HF transformers' greedy CFG (UnbatchedClassifierFreeGuidanceLogitsProcessor)."""
    kw = {} if negative is None else {"negative_prompt_ids": torch.tensor([negative])}
    out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                         max_new_tokens=n, do_sample=False, guidance_scale=gamma, **kw)
    return out[0, len(ids):].tolist()


def cfg_pipe(model, tok, n: int, **opts) -> Pipeline:
    return Pipeline(model, tokenizer=tok, decoding={"max_new_tokens": n},
                    plugins=[{"name": "guidance", "mode": "cfg", **opts}])


@pytest.mark.parametrize("negative", NEGATIVES)
@pytest.mark.parametrize("gamma", GAMMAS)
def test_cfg_matches_hf_tiny(tiny, tok, gamma, negative):
    arch, model = tiny
    pipe = cfg_pipe(model, tok, 20, guidance_scale=gamma, negative_prompt=negative)
    neg_ids = None if negative is None else pipe.encode(negative)
    for p in PROMPTS:
        ids = pipe.encode(p)
        assert pipe.generate(ids).token_ids == hf_cfg(model, ids, 20, gamma, neg_ids), (arch, p)


def test_cfg_changes_the_output(llama, tok):
    """Guards the comparison above against a no-op: γ ≠ 1 must change some greedy output."""
    plain = Pipeline(llama, tokenizer=tok, decoding={"max_new_tokens": 20})
    guided = cfg_pipe(llama, tok, 20, guidance_scale=3.0)
    assert any(plain.generate(p).token_ids != guided.generate(p).token_ids for p in PROMPTS)


def test_gamma_one_is_a_no_op(llama, tok):
    plain = Pipeline(llama, tokenizer=tok, decoding={"max_new_tokens": 20})
    guided = cfg_pipe(llama, tok, 20, guidance_scale=1.0, negative_prompt="anything")
    for p in PROMPTS:
        assert guided.generate(p).token_ids == plain.generate(p).token_ids


def test_negative_prompt_as_token_ids_equals_text(llama, tok):
    as_text = cfg_pipe(llama, tok, 16, guidance_scale=2.0, negative_prompt="xyz")
    as_ids = cfg_pipe(llama, tok, 16, guidance_scale=2.0, negative_prompt=as_text.encode("xyz"))
    assert as_text.generate("abc").token_ids == as_ids.generate("abc").token_ids


@pytest.mark.parametrize("tree", [False, True])
@pytest.mark.parametrize("negative", NEGATIVES)
def test_cfg_speculative_equals_plain(tiny, tok, script_proposer, negative, tree):
    arch, model = tiny
    opts = {"name": "guidance", "guidance_scale": 2.0, "negative_prompt": negative}
    plain = Pipeline(model, tokenizer=tok, decoding={"max_new_tokens": 24}, plugins=[opts])
    want = [plain.generate(p).token_ids for p in PROMPTS]
    for p, w in zip(PROMPTS, want):
        proposer = script_proposer([w], k=4, tree=tree, vocab=len(tok))
        spec = Pipeline(model, tokenizer=tok, decoding={"max_new_tokens": 24}, plugins=[proposer, opts])
        res = spec.generate(p)
        assert res.token_ids == w, (arch, p)
        if len(w) > 2:
            assert res.stats.accepted_draft_tokens > 0 and res.stats.target_passes < len(w)
    # batched, under speculation, every row with its own negative prompt
    negs = [negative, "zz", None]
    batch_opts = {**opts, "negative_prompt": negs}
    singles = [Pipeline(model, tokenizer=tok, decoding={"max_new_tokens": 24},
                        plugins=[{**opts, "negative_prompt": n}]).generate(p).token_ids
               for p, n in zip(PROMPTS, negs)]
    batch_spec = Pipeline(model, tokenizer=tok, decoding={"max_new_tokens": 24},
                          plugins=[script_proposer(singles, k=3, tree=tree, vocab=len(tok)), batch_opts])
    assert [c.token_ids for c in batch_spec.generate(PROMPTS).completions] == singles


def test_batch_equals_singles_with_own_negative_prompts(tiny, tok):
    arch, model = tiny
    negs = ["no", None, "x"]
    batch = cfg_pipe(model, tok, 20, guidance_scale=2.5, negative_prompt=negs)
    got = [c.token_ids for c in batch.generate(PROMPTS).completions]
    for p, n, g in zip(PROMPTS, negs, got):
        single = cfg_pipe(model, tok, 20, guidance_scale=2.5, negative_prompt=n).generate(p).token_ids
        assert g == single, (arch, p, n)
        neg_ids = None if n is None else batch.encode(n)
        assert g == hf_cfg(model, batch.encode(p), 20, 2.5, neg_ids), (arch, p, n)


@pytest.mark.parametrize("speculative", [False, True])
def test_cfg_composes_with_a_mask(tok, llama, no_repeat, script_proposer, reference, speculative):
    """CFG then a path-dependent mask equals an uncached reference: argmax over allowed of the CFG mix."""
    gamma, neg = 2.0, "qq"
    pipe0 = cfg_pipe(llama, tok, 20)
    neg_ids = pipe0.encode(neg)
    last = reference["last_logits"]

    def score(prefix_ids, prompt_len):
        c = torch.log_softmax(last(llama, prefix_ids), -1)
        u = torch.log_softmax(last(llama, neg_ids + prefix_ids[prompt_len:]), -1)
        return u + gamma * (c - u)

    opts = {"name": "guidance", "guidance_scale": gamma, "negative_prompt": neg}
    for p in PROMPTS:
        ids = pipe0.encode(p)
        want = reference["greedy"](lambda pre: score(pre, len(ids)), ids, 20, {1}, ban_repeat=True)
        plugins = [no_repeat(), opts]
        if speculative:
            plugins.insert(0, script_proposer([want], k=4, vocab=len(tok)))
        got = Pipeline(llama, tokenizer=tok, decoding={"max_new_tokens": 20}, plugins=plugins).generate(ids)
        assert got.token_ids == want, p
        assert all(a != b for a, b in zip(ids[-1:] + want, want))  # the mask really applied


def test_cfg_sampling_batch_equals_singles(llama, tok):
    """Seeded sampling with CFG: each row of a batch draws what it draws alone."""
    opts = {"name": "guidance", "guidance_scale": 1.8, "negative_prompt": ["ab", "cd", None]}
    dec = {"strategy": "sample", "max_new_tokens": 16, "seed": 7, "temperature": 0.9}
    batch = Pipeline(llama, tokenizer=tok, decoding=dec, plugins=[opts]).generate(PROMPTS)
    for k, p in enumerate(PROMPTS):
        one = Pipeline(llama, tokenizer=tok, decoding=dec,
                       plugins=[{**opts, "negative_prompt": opts["negative_prompt"][k]}]).generate(p)
        assert batch.completions[k].token_ids == one.token_ids


# -- the embedded model ------------------------------------------------------------------------

EMBEDDED_PROMPTS = ["Write one sentence about the sea.", "Name a colour."]


@pytest.mark.embedded
@pytest.mark.parametrize("gamma, negative", [
    (1.5, None), (3.0, None), (2.0, "Write about mountains."),
    (0.5, [{"role": "user", "content": "Answer in French."}]),
])
def test_cfg_matches_hf_embedded(embedded, gamma, negative):
    n = 10
    pipe = Pipeline(embedded.model, tokenizer=embedded.tokenizer, decoding={"max_new_tokens": n},
                    plugins=[{"name": "guidance", "guidance_scale": gamma, "negative_prompt": negative}])
    neg_ids = None if negative is None else pipe.encode(negative)
    for p in EMBEDDED_PROMPTS[: 1 if negative is not None else 2]:
        ids = pipe.encode(p)
        assert pipe.generate(ids).token_ids == hf_cfg(embedded.model, ids, n, gamma, neg_ids), p


@pytest.mark.embedded
def test_cfg_speculative_batch_embedded(embedded, script_proposer):
    opts = {"name": "guidance", "guidance_scale": 2.0, "negative_prompt": ["Be brief.", None]}
    dec = {"max_new_tokens": 10}
    plain = Pipeline(embedded.model, tokenizer=embedded.tokenizer, decoding=dec, plugins=[opts])
    want = [c.token_ids for c in plain.generate(EMBEDDED_PROMPTS).completions]
    for k, p in enumerate(EMBEDDED_PROMPTS):  # batch == singles
        single = Pipeline(embedded.model, tokenizer=embedded.tokenizer, decoding=dec,
                          plugins=[{**opts, "negative_prompt": opts["negative_prompt"][k]}])
        assert single.generate(p).token_ids == want[k]
    spec = Pipeline(embedded.model, tokenizer=embedded.tokenizer, decoding=dec,
                    plugins=[script_proposer(want, k=4, vocab=len(embedded.tokenizer)), opts])
    res = spec.generate(EMBEDDED_PROMPTS)
    assert [c.token_ids for c in res.completions] == want
    assert res.stats.accepted_draft_tokens > 0


# -- invariance: the prompt as its own negative prompt -----------------------------------------

@pytest.mark.parametrize("strategy", [{"strategy": "greedy"}, {"strategy": "beam", "num_beams": 3}])
def test_prompt_as_negative_prompt_is_plain_decoding(tiny, tok, strategy):
    """With negative prompt = prompt the two branches see the same tokens, so log p̂ = log p_c for
    every γ. Beam search reorders rows every step: the branch must follow (``source_rows``)."""
    arch, model = tiny
    dec = {**strategy, "max_new_tokens": 12}
    plain = Pipeline(model, tokenizer=tok, decoding=dec)
    ids = [plain.encode(p) for p in PROMPTS]
    guided = Pipeline(model, tokenizer=tok, decoding=dec,
                      plugins=[{"name": "guidance", "guidance_scale": 4.0, "negative_prompt": ids}])
    want = [c.token_ids for c in plain.generate(ids).completions]
    assert [c.token_ids for c in guided.generate(ids).completions] == want, arch
    # the same guidance with the default unconditional branch does change beam search's result
    other = Pipeline(model, tokenizer=tok, decoding=dec, plugins=[{"name": "guidance", "guidance_scale": 4.0}])
    assert [c.token_ids for c in other.generate(ids).completions] != want


@pytest.mark.parametrize("tree", [False, True])
def test_rows_finishing_early_under_speculation(llama, tok, script_proposer, tree):
    """Rows that hit EOS (some inside an accepted draft) stop while the others go on; the branch
    keeps the finished rows inert and the others exact."""
    opts = {"name": "guidance", "guidance_scale": 2.0, "negative_prompt": "a dull sentence"}
    dec = {"max_new_tokens": 24}
    plain = Pipeline(llama, tokenizer=tok, decoding=dec, plugins=[opts]).generate(PROMPTS)
    reasons = [c.finish_reason for c in plain.completions]
    assert "eos" in reasons and "length" in reasons, reasons
    want = [c.token_ids for c in plain.completions]
    for p, w in zip(PROMPTS, want):
        assert Pipeline(llama, tokenizer=tok, decoding=dec, plugins=[opts]).generate(p).token_ids == w
    spec = Pipeline(llama, tokenizer=tok, decoding=dec,
                    plugins=[script_proposer(want, k=5, tree=tree, vocab=len(tok)), opts]).generate(PROMPTS)
    assert [c.token_ids for c in spec.completions] == want
    assert [c.finish_reason for c in spec.completions] == reasons


# -- the unconditional branch batched into the target's forward pass ---------------------------

def _count_forwards(model) -> tuple[list[int], object]:
    calls = [0]
    handle = model.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls, handle


@pytest.mark.parametrize("decoding", [
    {"strategy": "greedy"},
    {"strategy": "sample", "seed": 5, "temperature": 0.8},
    {"strategy": "beam", "num_beams": 3},
])
def test_batched_branch_equals_a_separate_pass(llama, tok, script_proposer, decoding):
    """batch_branch (the default) and batch_branch: false give the same tokens, batches with their
    own negative prompts included; the batched form runs one forward per step, the other two."""
    dec = {**decoding, "max_new_tokens": 16}
    negs = ["a dull sentence", None, "zz"]
    results = {}
    for batched in (True, False):
        opts = {"name": "guidance", "guidance_scale": 2.0, "negative_prompt": negs, "batch_branch": batched}
        pipe = Pipeline(llama, tokenizer=tok, decoding=dec, plugins=[opts])
        calls, handle = _count_forwards(llama)
        try:
            res = pipe.generate(PROMPTS)
        finally:
            handle.remove()
        results[batched] = [[s.token_ids for s in c.sequences] or c.token_ids for c in res.completions]
        assert calls[0] == res.stats.target_passes * (1 if batched else 2), (batched, decoding)
    assert results[True] == results[False], decoding


@pytest.mark.parametrize("tree", [False, True])
def test_batched_branch_follows_drafts(tiny, tok, script_proposer, tree):
    """Under speculation the twin rows see the same draft tree; accepted nodes are kept alike."""
    arch, model = tiny
    opts = {"name": "guidance", "guidance_scale": 2.0, "negative_prompt": "a dull sentence"}
    dec = {"max_new_tokens": 20}
    want = [Pipeline(model, tokenizer=tok, decoding=dec, plugins=[{**opts, "batch_branch": False}])
            .generate(p).token_ids for p in PROMPTS]
    spec = Pipeline(model, tokenizer=tok, decoding=dec,
                    plugins=[script_proposer(want, k=4, tree=tree, vocab=len(tok)), opts])
    res = spec.generate(PROMPTS)
    assert [c.token_ids for c in res.completions] == want, arch
    assert res.stats.accepted_draft_tokens > 0
