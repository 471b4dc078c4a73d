"""Unit tests with hand-computed numbers: the Hamming term, the n-best list, and a full search on
a synthetic Markov model whose scores are worked out by hand below."""

from __future__ import annotations

import math

import pytest
import torch

from decodekit import Pipeline
from decodekit_diverse_beam import Hypotheses, hamming_penalty

ln = math.log


def test_hamming_penalty_counts_earlier_beams_tokens():
    previous = torch.tensor([[3, 1, 3], [0, 0, 2]])  # [P=2, m=3] tokens chosen by earlier groups
    pen = hamming_penalty(previous, 5, 0.5)
    assert pen.dtype == torch.float32
    assert pen.tolist() == [[0.0, 0.5, 0.0, 1.0, 0.0], [1.0, 0.0, 0.5, 0.0, 0.0]]


def test_hypotheses_keep_the_best_and_track_the_worst():
    h = Hypotheses(size=2, length_penalty=1.0, early_stopping=False, max_new_tokens=10)
    h.add([1], -2.0, 2)  # score -1.0
    h.add([2], -6.0, 3)  # score -2.0
    assert h.worst == -2.0 and len(h) == 2
    h.add([3], -9.0, 3)  # -3.0: worse than the worst of a full list, not kept
    assert [s for s, _ in h.beams] == [-1.0, -2.0]
    h.add([4], -3.0, 2)  # -1.5 replaces -2.0; the new worst is -1.5
    assert sorted(s for s, _ in h.beams) == [-1.5, -1.0] and h.worst == -1.5


def test_is_done_rules():
    def full(es, lp=1.0):
        h = Hypotheses(size=1, length_penalty=lp, early_stopping=es, max_new_tokens=10)
        h.add([1], -4.0, 2)  # score -2.0
        return h

    assert not Hypotheses(1, 1.0, True, 10).is_done(0.0, 3)  # not full
    assert full(True).is_done(-0.1, 3)  # full is enough
    assert full(False).is_done(-6.0, 3)  # best reachable -6/3 = -2.0 <= worst -2.0
    assert not full(False).is_done(-5.9, 3)
    assert not full("never").is_done(-6.0, 3)  # exact bound uses max_new_tokens: -6/10 > -2
    assert full("never").is_done(-20.0, 3)
    # lp <= 0: the current length. The list holds -4 / 2 ** -1 = -8; reachable: best * 2 ** 1.
    assert full("never", lp=-1.0).is_done(-4.0, 2)
    assert not full("never", lp=-1.0).is_done(-3.9, 2)


# Tokens: a, b, c, d of the tiny tokenizer. P(next | previous) of the synthetic model:
#   after a: a .1  b .6  c .2  d .1
#   after b: a .45 b .1  c .1  d .35
#   after c: a .5  b .2  c .2  d .1
#   otherwise (the prompt): a .5  b .3  c .15  d .05        EOS has probability 0.
# num_beams=4, num_groups=2 (2 beams each), λ=1, length_penalty=1, max_new_tokens=2.
#
# step 1, group 0 (only beam 0 live):  a ln.5, b ln.3                     -> chosen: a, b
# step 1, group 1 (a, b penalised by 1): a ln.5-1 = -1.693, c ln.15 = -1.897, b ln.3-1 = -2.204
#                                                                        -> a, c
# step 2, group 0: ab ln.5+ln.6 = -1.204, ba ln.3+ln.45 = -2.003, bd ln.3+ln.35, ac ...
#                                                                        -> ab, ba (tokens b, a)
# step 2, group 1 (b, a penalised by 1):
#   from a (ln.5-1): b ln.6-1 -> -3.204, c ln.2 -> -3.303, d ln.1 -> -3.996, a ln.1-1 -> -4.996
#   from c (ln.15):  c ln.2 -> -3.507, a ln.5-1 -> -3.590, d ln.1 -> -4.200, b ln.2-1 -> -4.507
#                                                                        -> ab, ac
# max_new_tokens reached: every running beam is finished with score sum / 2; pooled and sorted.
def test_hand_computed_search_on_a_markov_model(tok, markov):
    a, b, c, d = (tok.convert_tokens_to_ids(x) for x in "abcd")
    model = markov(tok, {
        a: {a: .1, b: .6, c: .2, d: .1},
        b: {a: .45, b: .1, c: .1, d: .35},
        c: {a: .5, b: .2, c: .2, d: .1},
        "*": {a: .5, b: .3, c: .15, d: .05},
    })
    pipe = Pipeline(model, tokenizer=tok, decoding={
        "strategy": "diverse_beam", "num_beams": 4, "num_groups": 2, "diversity_penalty": 1.0,
        "num_return_sequences": 4, "max_new_tokens": 2})
    seqs = pipe.generate([tok.convert_tokens_to_ids("z")]).completions[0].sequences
    want = [
        ([a, b], (ln(.5) + ln(.6)) / 2),  # group 0
        ([b, a], (ln(.3) + ln(.45)) / 2),  # group 0
        ([a, b], (ln(.5) - 1 + ln(.6) - 1) / 2),  # group 1: a and b were each taken by group 0
        ([a, c], (ln(.5) - 1 + ln(.2)) / 2),  # group 1
    ]
    assert [s.token_ids for s in seqs] == [w[0] for w in want]
    assert [s.score for s in seqs] == pytest.approx([w[1] for w in want], abs=1e-6)


# With EOS: after the prompt a .5, EOS .4, b .1; after a: a .3, b .7; after b: a .2, b .8.
# num_beams=2, num_groups=2 (1 beam each), λ=1, length_penalty=1, early_stopping=True.
# step 1, group 0 (K = 2 candidates): a ln.5, EOS ln.4. EOS ranks 2nd (>= group size 1): dropped.
#                                       -> running a; group 0 not done.
# step 1, group 1 (a penalised): EOS ln.4 ranks 1st -> finished [EOS], score ln.4 / 1; the list
#   (size 1) is full and early_stopping=True -> group 1 done. Running: a ln.5-1 (still picked).
# step 2, group 0: ab ln.5+ln.7, aa ln.5+ln.3 -> running ab.  Group 1 is done: its beam counts as
#   the pad token for later groups (none here).
# step 3 = max_new_tokens: group 0 ends with abb, (ln.5+ln.7+ln.8) / 3 = -1.273 / 3 = -0.424.
# Pooled and sorted: abb (-0.424), then [EOS] (ln.4 = -0.916).
def test_hand_computed_eos_and_early_stopping(tok, markov):
    a, b, eos = tok.convert_tokens_to_ids("a"), tok.convert_tokens_to_ids("b"), 1
    model = markov(tok, {a: {a: .3, b: .7}, b: {a: .2, b: .8}, "*": {a: .5, eos: .4, b: .1}})
    pipe = Pipeline(model, tokenizer=tok, decoding={
        "strategy": "diverse_beam", "num_beams": 2, "num_groups": 2, "diversity_penalty": 1.0,
        "early_stopping": True, "num_return_sequences": 2, "max_new_tokens": 3})
    seqs = pipe.generate([tok.convert_tokens_to_ids("z")]).completions[0].sequences
    assert [s.token_ids for s in seqs] == [[a, b, b], [eos]]
    assert [s.score for s in seqs] == pytest.approx([(ln(.5) + ln(.7) + ln(.8)) / 3, ln(.4)], abs=1e-6)
