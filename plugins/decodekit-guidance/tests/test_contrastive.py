"""Contrastive decoding end to end: equal to an uncached reference for each kind of amateur, unchanged
by speculative decoding (chains and trees), batches equal singles, composes with a mask."""

from __future__ import annotations

import copy

import pytest
import torch

from decodekit import Pipeline
from decodekit.testing import tiny_model

PROMPTS = ["hello world", "the quick brown fox", "a"]
EOS = {1}


def without_layers(model, arch: str, skip: list[int]):
    """An independent copy of ``model`` with decoder layers ``skip`` removed (for use_cache=False)."""
    m = copy.deepcopy(model)
    owner, attr = (m.transformer, "h") if arch == "gpt2" else (m.model, "layers")
    kept = [layer for i, layer in enumerate(getattr(owner, attr)) if i not in skip]
    setattr(owner, attr, torch.nn.ModuleList(kept))
    m.config.num_hidden_layers = len(kept)
    return m


@torch.inference_mode()
def window_logits(model, ids: list[int], n: int) -> torch.Tensor:
    """The expert on the last ``n`` tokens alone, as a fresh sequence: ``[V]``."""
    return model(input_ids=torch.tensor([ids[-n:]]), use_cache=False).logits[0, -1].float()


def make_score(reference, expert, amateur_fn, alpha: float, beta: float, head_without_last: bool = False):
    """score(prefix) = log p_exp − β log p_ama on {p_exp ≥ α max p_exp}, written out independently.

    ``head_without_last``: the expert is first restricted to tokens other than the prefix's last one
    (what the no-repeat mask allows), so that the head is taken among allowed tokens."""
    last = reference["last_logits"]

    def score(prefix: list[int]) -> torch.Tensor:
        z = last(expert, prefix).clone()
        if head_without_last:
            z[prefix[-1]] = float("-inf")
        lp_e = torch.log_softmax(z, -1)
        lp_a = torch.log_softmax(amateur_fn(prefix), -1)
        p_e = lp_e.exp()
        head = p_e >= alpha * p_e.max()
        return torch.where(head, lp_e - beta * lp_a, torch.full_like(lp_e, float("-inf")))

    return score


def amateurs(arch: str, model, tok, reference):
    """(options, amateur logits function for the reference) for each kind of amateur."""
    other = tiny_model(arch, tok, seed=11)
    last = reference["last_logits"]
    shallow = without_layers(model, arch, [1])
    return {
        "model": ({"amateur": other}, lambda pre: last(other, pre)),
        "context": ({"amateur_context": 3}, lambda pre: window_logits(model, pre, 3)),
        "skip": ({"amateur_skip_layers": [1]}, lambda pre: last(shallow, pre)),
    }


KINDS = ["model", "context", "skip"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("alpha, beta", [(0.1, 1.0), (0.05, 0.5)])
def test_contrastive_equals_reference(tiny, tok, reference, kind, alpha, beta):
    arch, model = tiny
    opts, amateur_fn = amateurs(arch, model, tok, reference)[kind]
    pipe = Pipeline(model, tokenizer=tok, decoding={"max_new_tokens": 16},
                    plugins=[{"name": "guidance", "mode": "contrastive", "alpha": alpha, "beta": beta, **opts}])
    score = make_score(reference, model, amateur_fn, alpha, beta)
    plain = Pipeline(model, tokenizer=tok, decoding={"max_new_tokens": 16})
    changed = False
    for p in PROMPTS:
        ids = pipe.encode(p)
        if kind == "context" and beta == 1.0 and len(ids) < 3:
            continue  # a prefix within the window: amateur = expert, every head token scores 0 (a tie)
        got = pipe.generate(ids).token_ids
        assert got == reference["greedy"](score, ids, 16, EOS), (arch, kind, p)
        changed |= got != plain.generate(ids).token_ids
    assert changed or beta == 0  # contrast with a real amateur changes some greedy output


@pytest.mark.parametrize("tree", [False, True])
@pytest.mark.parametrize("kind", KINDS)
def test_contrastive_speculative_and_batch(tiny, tok, reference, script_proposer, kind, tree):
    arch, model = tiny
    # β = 0.5: a short prompt inside the context window gives the amateur = expert, and ties at β = 1
    opts = {"name": "guidance", "mode": "contrastive", "beta": 0.5, **amateurs(arch, model, tok, reference)[kind][0]}
    dec = {"max_new_tokens": 16}
    want = [Pipeline(model, tokenizer=tok, decoding=dec, plugins=[opts]).generate(p).token_ids for p in PROMPTS]
    for p, w in zip(PROMPTS, want):
        spec = Pipeline(model, tokenizer=tok, decoding=dec,
                        plugins=[script_proposer([w], k=4, tree=tree, vocab=len(tok)), opts])
        res = spec.generate(p)
        assert res.token_ids == w, (arch, kind, p)
        if len(w) > 2:
            assert res.stats.accepted_draft_tokens > 0
    batch = Pipeline(model, tokenizer=tok, decoding=dec, plugins=[opts]).generate(PROMPTS)
    assert [c.token_ids for c in batch.completions] == want
    batch_spec = Pipeline(model, tokenizer=tok, decoding=dec,
                          plugins=[script_proposer(want, k=3, tree=tree, vocab=len(tok)), opts])
    assert [c.token_ids for c in batch_spec.generate(PROMPTS).completions] == want


@pytest.mark.parametrize("speculative", [False, True])
@pytest.mark.parametrize("head, alpha", [("allowed", 0.1), ("all", 1e-3)])
def test_contrastive_composes_with_a_mask(llama, tok, reference, no_repeat, script_proposer, speculative,
                                          head, alpha):
    """``head: allowed``: the head is taken among the tokens the mask allows. ``head: all``: on the
    whole vocabulary, then the mask applies (a small α keeps several tokens in the head, so the
    no-repeat mask always leaves one)."""
    opts_kind, amateur_fn = amateurs("llama", llama, tok, reference)["model"]
    beta = 0.5
    score = make_score(reference, llama, amateur_fn, alpha, beta, head_without_last=head == "allowed")
    opts = {"name": "guidance", "mode": "contrastive", "alpha": alpha, "beta": beta, "head": head, **opts_kind}
    for p in PROMPTS:
        ids = Pipeline(llama, tokenizer=tok).encode(p)
        want = reference["greedy"](score, ids, 16, EOS, ban_repeat=True)
        plugins = [no_repeat(), opts]
        if speculative:
            plugins.insert(0, script_proposer([want], k=4, vocab=len(tok)))
        got = Pipeline(llama, tokenizer=tok, decoding={"max_new_tokens": 16}, plugins=plugins).generate(ids)
        assert got.token_ids == want, p
        assert all(a != b for a, b in zip(ids[-1:] + want, want))


def test_windowed_amateur_scores_drafter_positions(llama, tok):
    """The stateless amateur also rescores a drafter's positions (positions.is_draft)."""
    from decodekit.positions import Positions

    pipe = Pipeline(llama, tokenizer=tok, decoding={"max_new_tokens": 4},
                    plugins=[{"name": "guidance", "mode": "contrastive", "amateur_context": 2}])
    plugin = pipe.plugins[0][1]
    gen, _ = pipe._generation(["hello", "ab"], False, {})
    positions = Positions(gen, [0, 1], [[[5]], [[6, 7]]], is_draft=True)
    logits = torch.randn(2, 1, len(tok))
    out = plugin.rescore(positions, logits)
    prefixes = [gen.tokens[0] + [5], gen.tokens[1] + [6, 7]]
    for i, pre in enumerate(prefixes):
        ama = window_logits(llama, pre, 2)
        lp_e, lp_a = torch.log_softmax(logits[i, 0], -1), torch.log_softmax(ama, -1)
        head = lp_e.exp() >= 0.1 * lp_e.exp().max()
        torch.testing.assert_close(out[i, 0][head], (lp_e - lp_a)[head], rtol=1e-4, atol=1e-4)
        assert torch.isinf(out[i, 0][~head]).all()


# -- the embedded model ------------------------------------------------------------------------

@pytest.mark.embedded
@pytest.mark.parametrize("opts", [{"amateur_context": 4, "beta": 0.5}, {"amateur_skip_layers": list(range(8, 30))}],
                         ids=["context", "skip"])
def test_contrastive_embedded_speculative_is_exact(embedded, script_proposer, opts):
    prompts = ["Write one sentence about the sea.", "Name a colour."]
    dec = {"max_new_tokens": 10}
    entry = {"name": "guidance", "mode": "contrastive", **opts}
    m, t = embedded.model, embedded.tokenizer
    want = [c.token_ids for c in Pipeline(m, tokenizer=t, decoding=dec, plugins=[entry]).generate(prompts).completions]
    plain = [c.token_ids for c in Pipeline(m, tokenizer=t, decoding=dec).generate(prompts).completions]
    assert want != plain  # the contrast changes the output
    single = Pipeline(m, tokenizer=t, decoding=dec, plugins=[entry]).generate(prompts[0]).token_ids
    assert single == want[0]  # batch == single
    for tree in (False, True):
        spec = Pipeline(m, tokenizer=t, decoding=dec,
                        plugins=[script_proposer(want, k=4, tree=tree, vocab=len(t)), entry])
        res = spec.generate(prompts)
        assert [c.token_ids for c in res.completions] == want, tree
        assert res.stats.accepted_draft_tokens > 0


def test_head_all_can_be_emptied_by_a_mask_head_allowed_cannot(llama, tok, reference):
    """A mask that bans the expert's favourite token: with α = 1 the head over the whole vocabulary is
    that token alone, so ``head: all`` leaves nothing allowed (a clear error); ``head: allowed`` takes
    the best allowed token, which is then plain greedy under the mask."""
    from decodekit import NoAllowedTokenError, hookimpl

    last_logits = reference["last_logits"]

    class BanTop:
        """Bans the expert's most likely token after each prefix (a function of the prefix only)."""

        @hookimpl
        def mask(self, positions, logits):
            allowed = torch.ones(logits.shape, dtype=torch.bool)  # [B', J, V]
            for i in range(len(positions)):
                for j in range(positions.length(i)):
                    allowed[i, j, int(last_logits(llama, positions.prefix(i, j)).argmax())] = False
            return allowed

    entry = {"name": "guidance", "mode": "contrastive", "amateur_context": 2, "alpha": 1.0}
    with pytest.raises(NoAllowedTokenError, match="plausible set"):
        Pipeline(llama, tokenizer=tok, decoding={"max_new_tokens": 4},
                 plugins=[BanTop(), {**entry, "head": "all"}]).generate("hello")
    got = Pipeline(llama, tokenizer=tok, decoding={"max_new_tokens": 4},
                   plugins=[BanTop(), {**entry, "head": "allowed"}]).generate("hello").token_ids
    # α = 1: the head is the single best allowed token, i.e. the second most likely raw token
    want = []
    ids = Pipeline(llama, tokenizer=tok).encode("hello")
    for _ in range(4):
        with torch.no_grad():
            z = llama(input_ids=torch.tensor([ids + want])).logits[0, -1]
        want.append(int(torch.topk(z, 2).indices[1]))
    assert got == want


def test_amateur_from_a_local_directory_equals_the_object(llama, tok, tmp_path):
    other = tiny_model("llama", tok, seed=11)
    other.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    dec = {"max_new_tokens": 12}
    by_path = Pipeline(llama, tokenizer=tok, decoding=dec,
                       plugins=[{"name": "guidance", "mode": "contrastive", "amateur": str(tmp_path)}])
    by_object = Pipeline(llama, tokenizer=tok, decoding=dec,
                         plugins=[{"name": "guidance", "mode": "contrastive", "amateur": other}])
    assert by_path.generate(PROMPTS[:2]).texts == by_object.generate(PROMPTS[:2]).texts


def test_amateur_directory_with_another_tokenizer_is_refused(llama, tok, tmp_path):
    from decodekit import ConfigError
    from decodekit.testing import tiny_tokenizer

    other_tok = tiny_tokenizer("zyxwvutsrqponmlkjihgfedcba .,!?'-:;{}[]\"0123456789\n")  # same size, other ids
    tiny_model("llama", other_tok, seed=11).save_pretrained(tmp_path)
    other_tok.save_pretrained(tmp_path)
    with pytest.raises(ConfigError, match="does not share the expert's tokenizer"):
        Pipeline(llama, tokenizer=tok, plugins=[{"name": "guidance", "mode": "contrastive", "amateur": str(tmp_path)}])


@pytest.mark.parametrize("tree", [False, True])
def test_skipping_middle_layers_with_a_cache(tok, reference, script_proposer, tree):
    """Skipped middle layers leave holes in the amateur's KV cache (no keys for them): decoding,
    speculative crops and tree drafts must still equal the uncached reference."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(3)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2, initializer_range=0.2,
                      pad_token_id=0, eos_token_id=1, bos_token_id=2)
    model = AutoModelForCausalLM.from_config(cfg).eval()
    shallow = without_layers(model, "llama", [1, 2])
    score = make_score(reference, model, lambda pre: reference["last_logits"](shallow, pre), 0.1, 0.5)
    entry = {"name": "guidance", "mode": "contrastive", "amateur_skip_layers": [2, 1], "beta": 0.5}
    dec = {"max_new_tokens": 16}
    for p in PROMPTS:
        ids = Pipeline(model, tokenizer=tok).encode(p)
        want = reference["greedy"](score, ids, 16, EOS)
        assert Pipeline(model, tokenizer=tok, decoding=dec, plugins=[entry]).generate(ids).token_ids == want
        spec = Pipeline(model, tokenizer=tok, decoding=dec,
                        plugins=[script_proposer([want], k=4, tree=tree, vocab=len(tok)), entry])
        assert spec.generate(ids).token_ids == want
