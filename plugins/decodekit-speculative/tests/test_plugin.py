"""Registration, options, and the parts one by one: lookup, planning, recycling, layer skip."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from decodekit import ConfigError, Pipeline
from decodekit.plugins import get_registry
from decodekit.testing import tiny_model
from decodekit_speculative import layerskip, lookup, planning
from decodekit_speculative.hindsight import HindsightTree
from decodekit_speculative.recycling import AdjacencyMatrix, PrefillCapture

from speculative_helpers import speculative


def four_layers(arch, tok):
    """A tiny random model like ``tiny_model(arch)`` but with 4 decoder layers."""
    from transformers import AutoModelForCausalLM

    cfg = tiny_model(arch, tok).config
    cfg.num_hidden_layers = 4
    if getattr(cfg, "layer_types", None):
        cfg.layer_types = [cfg.layer_types[0]] * 4
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(cfg).eval()


def test_plugin_is_listed():
    reg = get_registry(refresh=True)
    assert "speculative" in reg.plugins
    info = reg.plugins["speculative"]
    assert info.distribution == "decodekit-speculative"
    assert {"propose", "rescore", "advance", "start"} <= set(info.hooks)


@pytest.mark.parametrize("entry,match", [
    ({"proposer": "medusa"}, "proposer"),
    ({"proposer": "prompt_lookup", "ngram_mni": 2}, "ngram_mni"),
    ({"proposer": "draft_model"}, "draft"),
    ({"proposer": "layer_skip", "skip_layers": [0]}, "skip_layers"),
    ({"proposer": "prompt_lookup", "draft": "x"}, "draft"),
    ({"proposer": "prompt_lookup", "ngram_min": 3, "ngram_max": 2}, "ngram_min"),
    ({"proposer": "prompt_lookup", "verify_costs": {0: 1.0}}, "verify_costs"),
    ({"proposer": "draft_model", "draft": "/no/such/model"}, "no/such/model"),
    ({"proposer": "layer_skip", "skip_layers": [5]}, "skip_layers"),
    ({"proposer": "prompt_lookup", "recycle_prompt": 0}, "recycle_prompt"),
    ({"proposer": "token_recycling", "recycle_prompt": -1}, "recycle_prompt"),
])
def test_bad_options_are_errors_naming_the_option(tok, llama, entry, match):
    with pytest.raises(ConfigError, match=match):
        Pipeline(llama, tokenizer=tok, plugins=[{"name": "speculative", **entry}])


def test_config_entry_runs(tok, llama):
    pipe = Pipeline(llama, tokenizer=tok, decoding={"max_new_tokens": 8},
                    plugins=[{"name": "speculative", "proposer": "token_recycling", "top_k": 4}])
    plain = Pipeline(llama, tokenizer=tok, decoding={"max_new_tokens": 8})
    assert pipe.generate("abc abc").token_ids == plain.generate("abc abc").token_ids


# -- prompt lookup ----------------------------------------------------------------------------

def test_lookup_takes_the_longest_then_most_recent_match():
    t = [1, 2, 3, 9, 2, 3, 8, 5, 2, 3]  # suffix "2 3": at 1-2 (then 9) and 4-5 (then 8)
    assert lookup.lookup_draft(t, 1, 8, 3) == ([8, 5, 2], 2, False, False, 6 - 10)
    t = [7, 2, 3, 9, 1, 2, 3, 8, 7, 2, 3]  # "7 2 3" matches longer at the start
    assert lookup.lookup_draft(t, 1, 8, 2)[:2] == ([9, 1], 3)
    assert lookup.lookup_draft([1, 2, 3], 1, 8, 4)[:2] == ([], 0)
    assert lookup.lookup_draft([5, 6, 5], 2, 8, 4)[:2] == ([], 0)  # only a 1-gram match, ngram_min 2
    assert lookup.find_match(np.array([4, 4, 4, 4]), 1, 2) == (3, 2, False)  # capped at ngram_max


def test_lookup_prefers_the_match_where_the_last_copy_continues():
    # source at 0..8, then two other tokens, then a copy of the source from 11 on, in which 14
    # became 88; after "88 1" only "1" matches (at 1, 4, 7 and 12, 15). The copy offset (the
    # source 6 sat at text position 17: -11) says the copy continues at 19 - 11 = 8 (token 15).
    t = [10, 1, 11, 12, 1, 13, 14, 1, 15, 0, 0, 10, 1, 11, 12, 1, 13, 88, 1]
    assert lookup.lookup_draft(t, 1, 8, 1, offset=-11) == ([15], 1, True, False, 8 - 19)
    assert lookup.lookup_draft(t, 1, 8, 1) == ([13], 1, False, False, 16 - 19)  # the most recent: wrong here


def test_lookup_resumes_the_copy_at_the_next_word_start_when_nothing_matches():
    # source "the com itt ee met on" (ids 10 20 21 22 30 40, 20-22 one misspelt word), a separator,
    # then the copy "the" with the word fixed to a single new token 99. After 99 nothing matches;
    # the copy offset (-7: "the" at 0 was copied at 7) says the copy would continue at 9 - 7 = 2,
    # inside the misspelt word: the draft resumes at its next word start, 30 ("met").
    starts = np.zeros(100, dtype=bool)
    starts[[10, 20, 30, 40, 99]] = True
    t = [10, 20, 21, 22, 30, 40, 0, 10, 99]
    found = lookup.lookup_draft(t, 1, 8, 4, offset=-7, starts=starts)
    assert found == ([30, 40, 0, 10], 0, True, True, 4 - 9)
    assert found.key == lookup.RESUME_KEY
    assert lookup.lookup_draft(t, 1, 8, 4, offset=-7).tokens == []     # no word starts: no resume
    assert lookup.lookup_draft(t, 1, 8, 4, starts=starts).tokens == []  # no copy to resume
    starts[[30, 40, 0, 10]] = False                                     # no word start within reach
    assert lookup.lookup_draft(t, 1, 8, 4, offset=-7, starts=starts).tokens == []


def test_word_starts_reads_the_tokenizer(tok):
    starts = lookup.word_starts(tok, len(tok) + 3)
    pieces = tok.convert_ids_to_tokens(list(range(len(tok))))
    assert starts.shape == (len(tok) + 3,) and not starts[len(tok):].any()
    for i, piece in enumerate(pieces):
        if piece and piece[0].isalnum():
            assert not starts[i], piece
        if piece and piece[0] in lookup.WORD_MARKERS + " .,(":
            assert starts[i], piece


def test_lookup_buckets_are_monotone():
    assert [lookup.bucket(m) for m in (1, 2, 3, 4, 5, 6, 12, 13, 99)] == [0, 1, 2, 3, 3, 4, 5, 6, 6]


# -- planning ---------------------------------------------------------------------------------

def test_chain_planner_backs_off_when_drafting_does_not_pay():
    cpu = {1: 76.0, 4: 127.0, 8: 141.0, 16: 142.0, 32: 173.0}  # ms of a pass over s new tokens (issue 3)
    cost = lambda n: planning._interpolate(cpu, 1 + n, flat_beyond=True)  # noqa: E731
    assert planning.plan_chain(0.1, 16, cost) == 0           # open chat: no draft
    assert planning.plan_chain(0.95, 16, cost) >= 8          # copying: draft far
    flat = lambda n: 1.0  # noqa: E731
    assert planning.plan_chain(0.5, 16, flat) == 16          # free verification: always the most
    assert abs(planning.chain_gain(0.5, 2) - 1.75) < 1e-12


def test_tree_template_is_a_tree_in_best_first_order():
    rates = [0.5, 0.2, 0.1]
    t = planning.tree_template(rates, 20)
    reach = [r for _, _, r in t]
    assert reach == sorted(reach, reverse=True)
    for i, (parent, rank, r) in enumerate(t):
        assert -1 <= parent < i
        want = rates[rank] * (t[parent][2] if parent >= 0 else 1.0)
        assert abs(r - want) < 1e-12
    kids = {(p, r) for p, r, _ in t}
    assert len(kids) == len(t)  # no duplicate (parent, rank): siblings differ


def test_cost_model_interpolates_and_records():
    fixed = planning.CostModel({1: 1.0, 9: 2.0})
    assert fixed.cost(1, 5) == pytest.approx(1.5)
    assert fixed.cost(1, 50) == pytest.approx(2.0)
    m = planning.CostModel()
    assert m.cost(1, 1) == pytest.approx(1.0)
    assert m.cost(1, 5) == math.inf  # nothing to weigh a draft against before plain passes are timed
    m.record(1, 9, 0.14)
    assert m.cost(1, 9) == math.inf and not m.trusted(1, 1)
    for _ in range(3):
        m.record(1, 1, 0.07)
        m.record(1, 9, 0.14)
    assert m.cost(1, 5) == pytest.approx(0.105)
    assert m.cost(1, 17) > 0.14
    for t in (0.9, 0.14, 0.15):  # one pass slowed down by a busy machine does not count
        m.record(1, 9, t)
    assert m.cost(1, 9) == pytest.approx(0.14)
    m.record(1, 5, 3.0)  # a width timed once, during a load spike, is not written off
    assert m.cost(1, 5) == pytest.approx(0.105)


def test_rank_stats_forget_towards_the_prior():
    s = planning.RankStats([0.5], weight=1.0, decay=0.5)
    for _ in range(10):
        s.observe(0, False)
    low = s.rate()[0]
    assert low < 0.1
    for _ in range(20):
        s.step()
    assert s.rate()[0] > 0.45


def test_draft_ledger_asks_more_of_drafts_while_in_debt_and_nothing_while_they_pay():
    c1 = 0.05  # seconds per plain pass
    led = planning.DraftLedger()
    assert led.balance == -planning.CREDIT_PASSES and led.margin() == 1.0  # a new ledger starts in credit
    led.record(1.4 * c1, 1.0, c1, drafted=True)  # a tree cost 1.4 plain passes and committed 1 token
    assert led.balance == pytest.approx(0.4 - planning.CREDIT_PASSES) and led.margin() == 1.0
    led.balance = 0.4
    assert led.margin() == pytest.approx(1 + 0.4 * planning.DEBT_MARGIN)
    for _ in range(round(0.4 / planning.LOSS_ALLOWANCE)):  # plain steps pay the debt off
        led.record(c1, 1.0, c1, drafted=False)
    assert led.margin() == pytest.approx(1.0)

    # a planner that drafts whenever its (optimistic) estimate says a draft pays 1.1x, where every
    # draft in fact loses 0.4 of a pass: the margin keeps the loss near LOSS_ALLOWANCE
    lost, steps = 0.0, 2000
    for _ in range(steps):
        if 1.1 / led.margin() > 1.0:
            led.record(1.4 * c1, 1.0, c1, drafted=True)
            lost += 0.4
        else:
            led.record(c1, 1.0, c1, drafted=False)
    assert 0 < lost <= 1.1 * planning.LOSS_ALLOWANCE * steps + planning.CREDIT_PASSES
    assert 3.0 / led.margin() > 1.0  # a draft estimated to pay well still goes while in debt

    # where drafts pay, the gains bank up to the credit floor, and a loss within it changes nothing
    for _ in range(100):
        led.record(1.1 * c1, 3.0, c1, drafted=True)
    assert led.balance == -planning.CREDIT_PASSES
    led.record(2.5 * c1, 1.0, c1, drafted=True)
    assert led.margin() == 1.0
    led.spend(2 * c1, c1)  # work for drafting outside a step: a pure cost
    assert led.margin() > 1.0


def test_plugin_drafts_nothing_while_the_ledger_is_deep_in_debt(tok, llama):
    """Measured costs, adaptive drafts: a ledger deep in debt makes every draft too dear (the output
    is plain greedy's either way); with fixed ``verify_costs`` or ``adaptive: false`` it is not consulted."""
    plain = Pipeline(llama, tokenizer=tok, decoding={"max_new_tokens": 24}).generate("abc abc abc abc")
    for options, drafts in [({}, False), ({"verify_costs": {1: 1.0, 256: 1.0}}, True), ({"adaptive": False}, True)]:
        pipe = speculative(llama, tok, {"max_new_tokens": 24}, "prompt_lookup", **options)
        plug = pipe.plugins[0][1]
        plug.ledger.balance = 1e9
        res = pipe.generate("abc abc abc abc")
        assert res.token_ids == plain.token_ids
        assert (res.stats.drafted_tokens > 0) == drafts, options



@pytest.mark.parametrize("proposer", ["draft_model", "heads", "prompt_lookup"])
def test_planned_cost_scales_the_drafters_own_time_with_the_ledger(tok, llama, proposer):
    """``cost(n)`` is the pass over ``1 + n`` tokens plus the drafting (one drafter forward per node
    for a draft model, one run of the heads per step, nothing for lookup), all of it times the
    ledger's margin while drafting is in debt; a plain step (``n = 0``) is never marked up."""
    plug = speculative(llama, tok, {"max_new_tokens": 4}, proposer, draft=llama).plugins[0][1]
    for _ in range(planning.MIN_SAMPLES):
        plug.costs.record(1, 1, 0.1)
        plug.costs.record(1, 4, 0.2)
    plug.costs.draft_seconds = 0.01
    drafting = {"draft_model": 3 * 0.01, "heads": 0.01, "prompt_lookup": 0.0}[proposer]
    plug.ledger.balance = 2.0  # two plain passes of debt: margin 1 + 0.5 * 2
    cost = plug._cost_fn(None, 1)
    assert cost(0) == pytest.approx(0.1)
    assert cost(3) == pytest.approx((0.2 + drafting) * 2.0)

# -- token recycling --------------------------------------------------------------------------

def test_adjacency_matrix_instantiates_the_template_breadth_first():
    M = AdjacencyMatrix(vocab_size=10, k=3)
    logits = torch.zeros(2, 10)
    logits[0, [5, 6, 7]] = torch.tensor([3.0, 2.0, 1.0])   # after token 1: 5, 6, 7
    logits[1, [8, 9, 2]] = torch.tensor([3.0, 2.0, 1.0])   # after token 5: 8, 9, 2
    M.update(torch.tensor([1, 5]), logits)
    template = [(-1, 0), (-1, 1), (0, 0), (1, 0), (0, 2), (3, 0)]
    # node 3 (child of token 6) is missing: nothing is known after 6; so is its child, node 5
    assert M.instantiate(1, template) == [5, 6, 8, -1, 2, -1]
    assert M.instantiate(4, template) == [-1] * 6
    tree = HindsightTree([(p, r, 0.1) for p, r in template])
    draft = tree.draft(M.instantiate(1, template), [0, 1, 2, 3, 4])
    assert draft.tokens == [5, 6, 8, 2] and draft.parents == [-1, -1, 0, 0]
    assert tree.draft([-1] * 6, [0, 1]) is None


def test_adjacency_matrix_falls_back_to_the_most_committed_tokens():
    M = AdjacencyMatrix(vocab_size=10, k=3)
    M.count([4, 4, 7])
    assert M.fallback() is None                    # fewer than k distinct tokens so far
    M.count([2, 7, 9])
    assert M.fallback() == [4, 7, 2]               # counts 2, 2, 1, 1: ties go to the lower id
    logits = torch.zeros(1, 10)
    logits[0, [1, 3, 5]] = torch.tensor([3.0, 2.0, 1.0])
    M.update(torch.tensor([4]), logits)            # after 4: 1, 3, 5
    assert not M.has_row(8) and M.has_row(4)
    template = [(-1, 0), (-1, 1), (0, 0), (1, 0)]
    # the root's children come from the fallback; below them the matrix as usual (nothing after 7)
    assert M.instantiate(8, template, root=M.fallback()) == [4, 7, 1, -1]


def test_the_fallback_kept_up_to_date_equals_a_recount():
    """fallback() follows the counts step by step without scanning the vocabulary: after every
    count it names the tokens a fresh top-k of all counts names."""
    g = torch.Generator().manual_seed(0)
    M = AdjacencyMatrix(vocab_size=50, k=4)
    for step in range(300):
        M.count(torch.randint(0, 50, (int(torch.randint(1, 6, (), generator=g)),), generator=g).tolist())
        fresh = AdjacencyMatrix(vocab_size=50, k=4)
        fresh.counts = M.counts.clone()
        assert M.fallback() == fresh.fallback(), step


@torch.inference_mode()
def test_recycling_fills_the_matrix_from_the_prompts_scores(tok, llama):
    """After the prefill every prompt token's row holds the target's top-k at that position, for
    each row of a left-padded batch; the hook on the decoder is gone after the call."""
    pipe = speculative(llama, tok, {"max_new_tokens": 1}, "token_recycling", top_k=3)
    plug = pipe.plugins[0][1]
    prompts = [[5, 9, 14, 23, 31, 40, 47], [3, 11, 19]]  # distinct tokens, different lengths
    pipe.generate(prompts)
    for prompt in prompts:
        top = llama(torch.tensor([prompt])).logits[0].topk(2, dim=-1).indices  # [T, 2]
        for i, t in enumerate(prompt[:-1]):
            assert plug.matrix.M[t, :2].tolist() == top[i].tolist()
    assert not llama.get_decoder()._forward_hooks

    off = speculative(llama, tok, {"max_new_tokens": 1}, "token_recycling", recycle_prompt=0)
    off.generate(prompts)
    rows = off.plugins[0][1].matrix.M[:, 0] >= 0
    assert rows.nonzero().flatten().tolist() == [19, 47]  # only what the engine's own pass scored

    # where no tree would pay (every draft node costs a whole pass), the LM-head product is saved
    dear = speculative(llama, tok, {"max_new_tokens": 1}, "token_recycling", verify_costs={1: 1.0, 2: 2.0, 256: 256.0})
    dear.generate(prompts)
    assert (dear.plugins[0][1].matrix.M[:, 0] >= 0).nonzero().flatten().tolist() == [19, 47]


def test_prefill_capture_keeps_one_forward_and_removes_itself(llama):
    cap = PrefillCapture(llama)
    with torch.inference_mode():
        llama(torch.tensor([[1, 2, 3]]))
        assert cap.hidden.shape[:2] == (1, 3)
        assert not llama.get_decoder()._forward_hooks
        llama(torch.tensor([[4, 5]]))
    assert cap.take().shape[:2] == (1, 3)
    PrefillCapture(llama).close()
    assert not llama.get_decoder()._forward_hooks


def test_recycling_drafts_from_the_fallback_and_stays_exact(tok, llama):
    pipe = speculative(llama, tok, {"max_new_tokens": 24}, "token_recycling", verify_costs={1: 1.0, 256: 1.0})
    plain = Pipeline(llama, tokenizer=tok, decoding={"max_new_tokens": 24})
    plug = pipe.plugins[0][1]
    for prompt in ["hello there", "a b c d", "zebra"]:
        assert pipe.generate(prompt).token_ids == plain.generate(prompt).token_ids
    assert plug.cold_tree.visits > 0  # some steps started from a token without a row


def test_recycling_matrix_persists_across_calls(tok, llama):
    pipe = speculative(llama, tok, {"max_new_tokens": 12}, "token_recycling", verify_costs={1: 1.0, 256: 1.0})
    plug = pipe.plugins[0][1]
    pipe.generate("hello there")
    known = int((plug.matrix.M[:, 0] >= 0).sum())
    assert known > 0
    second = pipe.generate("hello there")
    assert int((plug.matrix.M[:, 0] >= 0).sum()) >= known
    assert second.stats.drafted_tokens > 0


# -- layer skip -------------------------------------------------------------------------------

@pytest.mark.parametrize("arch", ["llama", "gpt2", "qwen2"])
def test_skipped_view_shares_weights_and_leaves_the_target_alone(tok, arch):
    model = four_layers(arch, tok)
    ids = torch.tensor([[5, 6, 7, 8]])
    before = model(input_ids=ids).logits
    view = layerskip.skipped_view(model, [1, 2])
    path, layers = layerskip.decoder_layers(view)
    assert isinstance(layers[1], layerskip.SkippedLayer) and layers[3] is layerskip.decoder_layers(model)[1][3]
    assert layerskip.decoder_layers(model)[1][1] is not layers[1]  # the target keeps its layer
    assert {p.data_ptr() for p in view.parameters()} <= {p.data_ptr() for p in model.parameters()}
    torch.testing.assert_close(model(input_ids=ids).logits, before)
    assert not torch.allclose(view(input_ids=ids).logits, before)
    assert layerskip.default_skip(30, 0.5) == sorted(set(layerskip.default_skip(30, 0.5)))
    assert 0 not in layerskip.default_skip(30, 0.5) and len(layerskip.default_skip(30, 0.5)) == 15


def test_layer_search_picks_a_set_and_stays_exact(tok):
    model = four_layers("llama", tok)
    prompt = "the cat sat on the mat"
    pipe = speculative(model, tok, {"max_new_tokens": 16}, "layer_skip", skip_layers=None, search=True,
                       skip_ratio=0.5, verify_costs={1: 1.0, 256: 1.0}, draft_threshold=0.0)
    plain = Pipeline(model, tokenizer=tok, decoding={"max_new_tokens": 16})
    assert pipe.generate(prompt).token_ids == plain.generate(prompt).token_ids
    skip = pipe.plugins[0][1].skip
    assert len(skip) == 2 and 0 not in skip


def test_draft_model_vocab_wider_than_target_is_cut(tok, llama):
    wide = tiny_model("llama", tok, vocab_size=len(tok) + 7, seed=1)
    pipe = speculative(llama, tok, {"max_new_tokens": 12}, "draft_model", draft=wide,
                       verify_costs={1: 1.0, 256: 1.0}, draft_threshold=0.0)
    plain = Pipeline(llama, tokenizer=tok, decoding={"max_new_tokens": 12})
    res = pipe.generate("abc abc")
    assert res.token_ids == plain.generate("abc abc").token_ids and res.stats.drafted_tokens > 0


def test_unused_chain_drafts_back_off_under_expensive_verification(tok, llama):
    """With a pass over 2+ tokens costing 3 plain passes, no draft pays: none is proposed after the
    first (free) prefill draft, and the output is unchanged."""
    costly = {1: 1.0, 2: 3.0, 256: 3.0}
    pipe = speculative(llama, tok, {"max_new_tokens": 16}, "prompt_lookup", verify_costs=costly)
    plain = Pipeline(llama, tokenizer=tok, decoding={"max_new_tokens": 16})
    res = pipe.generate("abc abc abc")
    assert res.token_ids == plain.generate("abc abc abc").token_ids
    assert res.stats.drafted_tokens <= 16  # only the prefill step drafted
