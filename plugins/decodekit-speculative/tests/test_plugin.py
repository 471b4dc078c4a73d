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
from decodekit_speculative.recycling import AdjacencyMatrix

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
    assert planning.plan_tree(rates, 20, lambda n: 1.0 + 10.0 * (n > 0)) == []
    assert len(planning.plan_tree(rates, 20, lambda n: 1.0)) == 20


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


# -- token recycling --------------------------------------------------------------------------

def test_adjacency_matrix_drafts_the_template_breadth_first():
    M = AdjacencyMatrix(vocab_size=10, k=3)
    logits = torch.zeros(2, 10)
    logits[0, [5, 6, 7]] = torch.tensor([3.0, 2.0, 1.0])   # after token 1: 5, 6, 7
    logits[1, [8, 9, 2]] = torch.tensor([3.0, 2.0, 1.0])   # after token 5: 8, 9, 2
    M.update(torch.tensor([1, 5]), logits)
    template = [(-1, 0, 0.5), (-1, 1, 0.2), (0, 0, 0.25), (1, 0, 0.1), (0, 2, 0.05)]
    draft, ranks = M.draft(1, template)
    # node 3 (child of token 6) is dropped: nothing is known after 6
    assert draft.tokens == [5, 6, 8, 2] and draft.parents == [-1, -1, 0, 0] and ranks == [0, 1, 0, 2]
    assert M.draft(4, template) == (None, [])


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
