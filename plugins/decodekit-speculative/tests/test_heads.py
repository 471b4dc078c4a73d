"""Proposer ``heads`` (Medusa / Hydra draft heads): the head rule, the tree, the hidden state it
reads, exactness (greedy and sampling, with a mask and a rescorer), the training command, errors,
and the shipped heads on the embedded model."""

from __future__ import annotations

import gc
import json
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from decodekit import ConfigError, Pipeline, hookimpl
from decodekit.testing import tiny_model
from decodekit_speculative import Speculative, SpeculativeOptions
from decodekit_speculative import heads as H
from decodekit_speculative import train_heads as T

from speculative_helpers import FLAT, BanTokens, Bias, sample_many, speculative, tiny_heads
from test_greedy_exact import BAN, BIAS, DECODING, PROMPTS
from test_sampling_exact import ALPHA, N, chi_square_pvalue, reference
from test_sampling_exact import BAN as S_BAN
from test_sampling_exact import BIAS as S_BIAS
from test_sampling_exact import PROMPT as S_PROMPT
from test_sampling_exact import setup  # noqa: F401  (fixture)

KINDS = ["medusa", "hydra"]


def lm_hooks(model) -> int:
    return len(model.get_output_embeddings()._forward_pre_hooks)


def mask_and_rescore():
    return [Bias(BIAS), BanTokens(BAN)]


# -- the heads and the tree ------------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_untrained_heads_predict_what_the_lm_head_predicts(llama, kind):
    """Zero-initialised blocks are the identity: every head's logits are the LM head's on h_t."""
    heads = H.DraftHeads(32, 3, kind)
    h = torch.randn(5, 32)
    prev = torch.randn(5, 3, 32)
    s = heads.states(h, prev)                              # [5, 3, 32]
    assert torch.equal(s, h[:, None].expand(5, 3, 32))
    W = llama.get_output_embeddings().weight
    assert torch.allclose(F.linear(s, W)[:, 2], F.linear(h, W))


def test_hydra_heads_depend_on_the_previous_token_and_medusa_heads_do_not():
    h = torch.randn(4, 32)
    e1, e2 = torch.randn(4, 3, 32), torch.randn(4, 3, 32)
    medusa = H.DraftHeads(32, 3, "medusa").randomize(1)
    hydra = H.DraftHeads(32, 3, "hydra").randomize(1)
    assert torch.equal(medusa.states(h, e1), medusa.states(h, e2))
    a, b = hydra.states(h, e1), hydra.states(h, e2)
    assert not torch.allclose(a[:, 0], b[:, 0])
    # sequential: head 2 reads head 1's state, so changing only e(x_{t+1}) changes head 2 too
    e3 = e1.clone()
    e3[:, 0] += 1.0
    assert not torch.allclose(hydra.states(h, e3)[:, 1], a[:, 1])


def test_depth_tree_is_best_first_by_reach():
    rates = [[0.6, 0.25], [0.5, 0.2]]
    t = H.depth_tree_template(rates, 10)
    assert [(p, d, r) for p, d, r, _ in t] == [(-1, 1, 0), (0, 2, 0), (-1, 1, 1), (2, 2, 0), (0, 2, 1), (2, 2, 1)]
    assert [round(x, 6) for *_, x in t] == [0.6, 0.3, 0.25, 0.125, 0.12, 0.05]
    for i, (p, d, _, _) in enumerate(t):
        assert p < i and d == (1 if p < 0 else t[p][1] + 1) and d <= len(rates)
    assert len(H.depth_tree_template(rates, 3)) == 3


def test_tree_size_follows_the_cost():
    rates = [[0.6, 0.25], [0.5, 0.2], [0.4, 0.1]]
    one = lambda depth: 1  # noqa: E731  (Medusa: one product for every level)
    assert len(H.plan_heads_tree(rates, 8, lambda n, p: 1.0, one)) == 8          # free: draft the most
    assert H.plan_heads_tree(rates, 8, lambda n, p: 1.0 + n, one) == []          # each node costs a pass: none
    some = H.plan_heads_tree(rates, 8, lambda n, p: 1.0 + 0.15 * n, one)
    assert 0 < len(some) < 8
    # Hydra: every level is one more product; priced at a fifth of a pass each, the tree stays shallower
    levels = lambda depth: max(1, depth)  # noqa: E731
    flat = H.plan_heads_tree(rates, 8, lambda n, p: 1.0 + 0.02 * n + (0.2 * p if n else 0.0), one)
    deep = H.plan_heads_tree(rates, 8, lambda n, p: 1.0 + 0.02 * n + (0.2 * p if n else 0.0), levels)
    assert max(d for _, d, _, _ in deep) < max(d for _, d, _, _ in flat)


def test_priors_come_from_the_measured_accuracy():
    meta = {"accuracy": [[0.5, 0.1], [0.3, 0.05]]}
    rates = H.prior_rates(meta, 3, 4)
    assert rates[0][:2] == [0.5, 0.1] and rates[1][:2] == [0.3, 0.05]
    assert len(rates) == 3 and all(len(r) == 4 for r in rates)  # missing entries: the generic guess
    assert H.prior_rates(None, 2, 3)[0][0] == H.PRIOR_TOP


@pytest.mark.parametrize("kind", KINDS)
def test_draft_nodes_hold_each_heads_ranked_tokens(tok, llama, kind):
    heads = tiny_heads(llama, kind, seed=3)
    plug = Speculative(SpeculativeOptions(proposer="heads"), Pipeline(llama, tokenizer=tok), draft_heads=heads)
    prop = plug.heads
    template = H.depth_tree_template([[0.6, 0.3, 0.1], [0.5, 0.2, 0.1], [0.4, 0.1, 0.05]], 12)
    h = torch.randn(2, 32)
    last = [5, 9]
    out = prop.draft(h, last, template)
    W = llama.get_output_embeddings().weight
    E = llama.get_input_embeddings()
    for row, (draft, info) in enumerate(out):
        assert info == [(d, r) for _, d, r, _ in template]
        for i, (p, d, r, _) in enumerate(template):
            if kind == "medusa":  # depth d: head d's rank-r token, whatever the parent
                want = F.linear(heads.medusa(h[row:row + 1])[0, d - 1], W).topk(r + 1).indices[r]
            else:  # hydra: walk the node's path, feeding each token's embedding to the next head
                path = draft.path(i)
                s = heads.hydra_step(0, h[row:row + 1], E(torch.tensor([last[row]])))
                for depth, node in enumerate(path[:-1], start=1):
                    s = heads.hydra_step(depth, s, E(torch.tensor([draft.tokens[node]])))
                want = F.linear(s[0], W).topk(r + 1).indices[r]
            assert draft.tokens[i] == int(want)
        for node in [-1, *range(len(draft))]:  # siblings are distinct (needed by the verifiers)
            kids = [draft.tokens[c] for c in draft.children(node)]
            assert len(kids) == len(set(kids))


# -- the hidden state the heads read ---------------------------------------------------------------

@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_heads_read_the_hidden_state_of_the_last_accepted_token(tok, arch, monkeypatch):
    """After verify, the kept hidden state is the target's own at the last committed token but one
    (the LM-head input that chose the last token), as a plain forward over the text computes it."""
    model = tiny_model(arch, tok)
    seen = []
    real = H.HeadProposer.propose

    def spy(self, gen, active, cost):
        call = self._call(gen)
        if call.hidden is not None:
            seen.extend((call.hidden[b].clone(), list(gen.tokens[b])) for b in active)
        return real(self, gen, active, cost)

    monkeypatch.setattr(H.HeadProposer, "propose", spy)
    pipe = speculative(model, tok, DECODING, "heads", extra=mask_and_rescore(), verify_costs=FLAT,
                       heads=tiny_heads(model, "hydra"))
    res = pipe.generate(PROMPTS[:4])
    assert res.stats.accepted_draft_tokens > 0 and len(seen) > 10
    cap = H.HiddenCapture(model)
    try:
        for hidden, tokens in seen:
            cap.arm()
            with torch.inference_mode():
                model(input_ids=torch.tensor([tokens[:-1]]))
            want = cap.take()[0, -1]  # [d]: the LM-head input at the token before the last
            assert torch.allclose(hidden, want, atol=1e-4), (len(tokens), (hidden - want).abs().max())
    finally:
        cap.close()


def test_the_hook_never_outlives_a_call(tok, llama):
    pipe = speculative(llama, tok, DECODING, "heads", verify_costs=FLAT)
    pipe.generate(PROMPTS[:2])
    assert lm_hooks(llama) == 0
    sample_many(pipe, [2, 5, 6], 3, seed=0)  # the engine alone: no finish hook, rows all done
    assert lm_hooks(llama) == 0

    class Boom:
        name = "boom"
        calls = 0

        @hookimpl
        def rescore(self, logits):
            Boom.calls += 1
            if Boom.calls == 3:
                raise RuntimeError("boom")

    pipe = speculative(llama, tok, DECODING, "heads", extra=[Boom()], verify_costs=FLAT)
    with pytest.raises(Exception, match="boom"):
        pipe.generate(PROMPTS[0])
    gc.collect()  # a call that died half-way: its state is collected, and the hook with it
    assert lm_hooks(llama) == 0


# -- exactness ------------------------------------------------------------------------------------

@pytest.fixture(scope="module", params=["llama", "gpt2", "qwen2"])
def trained(request, tok):
    """A tiny model and heads of each kind trained on it by self-distillation (seconds)."""
    model = tiny_model(request.param, tok)
    return model, {kind: T.train(model, tok, kind=kind, prompts=12, tokens_per_prompt=24, epochs=2, lr=1e-2,
                                 gen_batch=6, train_batch=64)[0] for kind in KINDS}


@pytest.mark.parametrize("kind", KINDS)
def test_greedy_is_token_identical_with_mask_and_rescore(tok, trained, kind):
    model, heads = trained
    plain = Pipeline(model, tokenizer=tok, decoding=DECODING, plugins=mask_and_rescore())
    want = [c.token_ids for c in plain.generate(PROMPTS).completions]
    for options in ({"verify_costs": FLAT}, {"verify_costs": FLAT, "adaptive": False, "top_k": 3}, {}):
        pipe = speculative(model, tok, DECODING, "heads", extra=mask_and_rescore(), heads=heads[kind], **options)
        for _ in range(2):
            got = pipe.generate(PROMPTS)
            assert [c.token_ids for c in got.completions] == want
    forced = speculative(model, tok, DECODING, "heads", extra=mask_and_rescore(), heads=heads[kind],
                         verify_costs=FLAT).generate(PROMPTS)
    assert forced.stats.accepted_draft_tokens > 0
    assert forced.stats.drafted_tokens > forced.stats.accepted_draft_tokens


@pytest.mark.parametrize("with_plugins", [False, True], ids=["alone", "mask+rescore"])
def test_hydra_sampling_matches_plain(setup, with_plugins):  # noqa: F811
    """The chi-square check of test_sampling_exact.py for Hydra heads (Medusa runs there)."""
    tok, model, _, decoding = setup
    extra = [Bias(S_BIAS), BanTokens(S_BAN)] if with_plugins else []
    pipe = speculative(model, tok, decoding, "heads", extra=extra, heads=tiny_heads(model, "hydra", seed=2),
                       verify_costs=FLAT, max_draft_tokens=4)
    counts = sample_many(pipe, S_PROMPT, N, seed=2)
    stats = counts.stats
    assert stats.accepted_draft_tokens > N // 10, f"drafts were hardly exercised: {stats}"
    assert stats.drafted_tokens > stats.accepted_draft_tokens
    assert chi_square_pvalue(counts, reference(model, with_plugins)) > ALPHA


# -- files, the training command, errors -----------------------------------------------------------

def test_save_and_load_round_trip(tmp_path):
    heads = H.DraftHeads(32, 2, "hydra").randomize(4)
    H.save_heads(heads, tmp_path, {"vocab_size": 50, "accuracy": [[0.4], [0.2]]})
    back, meta = H.load_heads(tmp_path, hidden_size=32, vocab_size=50)
    assert meta["kind"] == "hydra" and back.num_heads == 2
    for (k, a), (_, b) in zip(heads.state_dict().items(), back.state_dict().items()):
        assert torch.allclose(a.to(torch.bfloat16).float(), b), k


def test_the_training_command_runs_end_to_end(tok, tmp_path):
    model_dir, out = tmp_path / "model", tmp_path / "heads"
    model = tiny_model("llama", tok)
    model.save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    cmd = [sys.executable, "-m", "decodekit_speculative.train_heads", "--model", str(model_dir), "--out", str(out),
           "--heads", "2", "--kind", "hydra", "--prompts", "8", "--tokens-per-prompt", "16", "--epochs", "2",
           "--seed", "1", "--device", "cpu"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "wrote" in run.stderr
    meta = json.loads((out / H.META).read_text())
    assert meta["kind"] == "hydra" and meta["num_heads"] == 2 and meta["hidden_size"] == 32
    assert meta["command"].startswith("python -m decodekit_speculative.train_heads --model ")
    assert len(meta["accuracy"]) == 2 and meta["train"]["positions"] > 0
    assert (out / H.WEIGHTS).stat().st_size < 20_000  # the heads only: no LM head, no embeddings
    decoding = {"strategy": "greedy", "max_new_tokens": 16}
    plain = Pipeline(str(model_dir), decoding=decoding, device="cpu")
    pipe = Pipeline(str(model_dir), decoding=decoding, device="cpu",
                    plugins=[{"name": "speculative", "proposer": "heads", "heads": str(out),
                              "head_kind": "hydra", "verify_costs": FLAT}])
    res = pipe.generate(PROMPTS[:4])
    assert [c.token_ids for c in res.completions] == [c.token_ids for c in plain.generate(PROMPTS[:4]).completions]
    assert res.stats.drafted_tokens > 0


def test_builtin_prompts_are_varied_and_seeded():
    a, b = T.builtin_prompts(64, seed=0), T.builtin_prompts(64, seed=1)
    assert len(set(a)) == 64 and a != b and a == T.builtin_prompts(64, seed=0)


def test_bad_heads_are_clear_errors(tok, llama, tmp_path):
    def build(**opts):
        return Pipeline(llama, tokenizer=tok, plugins=[{"name": "speculative", "proposer": "heads", **opts}])

    with pytest.raises(ConfigError, match="no draft heads at .*train_heads --model"):
        build(heads=str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="shipped heads exist only for.*train_heads"):
        build()  # a model object has no shipped heads
    H.save_heads(H.DraftHeads(16, 2, "medusa"), tmp_path / "h16", {"vocab_size": 10, "model": "other"})
    with pytest.raises(ConfigError, match="hidden size 16.*target's hidden size is 32.*train_heads"):
        build(heads=str(tmp_path / "h16"))
    H.save_heads(H.DraftHeads(32, 2, "medusa"), tmp_path / "v10", {"vocab_size": 10})
    with pytest.raises(ConfigError, match="vocabulary of 10 tokens"):
        build(heads=str(tmp_path / "v10"))
    H.save_heads(H.DraftHeads(32, 2, "medusa"), tmp_path / "ok", {"vocab_size": len(tok)})
    with pytest.raises(ConfigError, match="head_kind is hydra, but the heads are medusa"):
        build(heads=str(tmp_path / "ok"), head_kind="hydra")
    (tmp_path / "ok" / H.WEIGHTS).write_bytes(b"not safetensors")
    with pytest.raises(Exception):
        build(heads=str(tmp_path / "ok"))
    with pytest.raises(ConfigError, match="heads"):
        Pipeline(llama, tokenizer=tok, plugins=[{"name": "speculative", "proposer": "prompt_lookup", "heads": "x"}])
    with pytest.raises(ValueError, match="draft_heads"):
        Speculative(SpeculativeOptions(proposer="prompt_lookup"), Pipeline(llama, tokenizer=tok),
                    draft_heads=tiny_heads(llama))


# -- the shipped heads on the embedded model -------------------------------------------------------

@pytest.mark.embedded
@pytest.mark.parametrize("kind", KINDS)
def test_shipped_heads_on_the_embedded_model(kind):
    from test_embedded import BAN as E_BAN
    from test_embedded import BIAS as E_BIAS
    from test_embedded import PROMPTS as E_PROMPTS

    decoding = {"strategy": "greedy", "max_new_tokens": 32}
    plugins = [Bias(E_BIAS), BanTokens(E_BAN)]
    plain = Pipeline("smollm2-135m", decoding=decoding, plugins=plugins)
    want = [c.token_ids for c in plain.generate(E_PROMPTS).completions]
    for opts in ({"verify_costs": FLAT}, {}):  # forced drafting, then the adaptive default
        pipe = Pipeline("smollm2-135m", decoding=decoding, plugins=[
            {"name": "speculative", "proposer": "heads", "head_kind": kind, **opts}, *plugins])
        res = pipe.generate(E_PROMPTS)
        assert [c.token_ids for c in res.completions] == want
        if opts:
            print(f"\n{kind}: {res.stats.as_dict()}")
            assert res.stats.accepted_draft_tokens > 0
            assert res.stats.mean_tokens_per_pass > 1.2
