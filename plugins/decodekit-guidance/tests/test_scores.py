"""The scoring rules on synthetic logits: the plausibility set, the CD score, the CFG mix (vs HF)."""

from __future__ import annotations

import math

import pytest
import torch

from decodekit_guidance import cfg_scores, contrastive_scores, plausible

NEG_INF = float("-inf")


def random_logits(*shape: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g) * 3


# -- plausibility set --------------------------------------------------------------------------

@pytest.mark.parametrize("alpha", [0.0, 1e-3, 0.1, 0.5, 1.0])
def test_plausible_set_is_the_definition(alpha):
    logits = random_logits(4, 3, 50, seed=1)
    got = plausible(logits, alpha)
    p = torch.softmax(logits.double(), dim=-1)
    want = p >= alpha * p.amax(dim=-1, keepdim=True)  # {x : p(x) >= α max p}, in float64
    assert torch.equal(got, want)
    assert got.any(dim=-1).all()  # never empty: the most likely token is always in it
    assert torch.equal(got.gather(-1, logits.argmax(-1, keepdim=True)), torch.ones(4, 3, 1, dtype=torch.bool))


def test_plausible_set_hand_example():
    # p ∝ e^[3, 2.9, 0, -5]: p[1]/p[0] = e^-0.1 ≈ 0.905 ≥ 0.1; p[2]/p[0] = e^-3 ≈ 0.0498 < 0.1
    logits = torch.tensor([3.0, 2.9, 0.0, -5.0])
    assert plausible(logits, 0.1).tolist() == [True, True, False, False]
    assert plausible(logits, 0.04).tolist() == [True, True, True, False]
    assert plausible(logits, 1.0).tolist() == [True, False, False, False]


def test_plausible_set_ignores_ruled_out_tokens_and_is_shift_invariant():
    logits = random_logits(2, 30, seed=2)
    logits[:, :5] = NEG_INF
    got = plausible(logits, 0.0)
    assert not got[:, :5].any() and got[:, 5:].all()  # α = 0: every finite token
    assert torch.equal(plausible(logits, 0.2), plausible(logits + 7.5, 0.2))


def test_plausible_rejects_bad_alpha():
    with pytest.raises(ValueError, match="alpha"):
        plausible(torch.zeros(3), 1.5)


# -- contrastive score -------------------------------------------------------------------------

@pytest.mark.parametrize("alpha, beta, tau", [(0.1, 1.0, 1.0), (0.1, 0.5, 1.0), (0.01, 2.0, 0.5), (0.0, 0.0, 1.0)])
def test_contrastive_score_is_the_definition(alpha, beta, tau):
    e, a = random_logits(3, 2, 40, seed=3), random_logits(3, 2, 40, seed=4)
    got = contrastive_scores(e, a, alpha, beta, tau)
    pe = torch.softmax(e.double(), -1)
    pa = torch.softmax(a.double() / tau, -1)
    head = pe >= alpha * pe.amax(-1, keepdim=True)
    want = torch.where(head, pe.log() - beta * pa.log(), torch.tensor(NEG_INF, dtype=torch.float64))
    assert torch.equal(torch.isinf(got), ~head)
    torch.testing.assert_close(got[head].double(), want[head], rtol=1e-5, atol=1e-5)


def test_contrastive_hand_example():
    # expert p ∝ e^[3, 2.9, -5]; amateur p ∝ e^[5, 0, 0] strongly prefers token 0, so CD picks token 1
    e = torch.tensor([3.0, 2.9, -5.0])
    a = torch.tensor([5.0, 0.0, 0.0])
    s = contrastive_scores(e, a, alpha=0.1, beta=1.0)
    lse_e = math.log(math.exp(3.0) + math.exp(2.9) + math.exp(-5.0))
    lse_a = math.log(math.exp(5.0) + 2.0)
    assert s[2].item() == NEG_INF
    assert s[0].item() == pytest.approx((3.0 - lse_e) - (5.0 - lse_a), abs=1e-5)
    assert s[1].item() == pytest.approx((2.9 - lse_e) - (0.0 - lse_a), abs=1e-5)
    assert int(s.argmax()) == 1 and int(e.argmax()) == 0
    # β = 0 is the expert restricted to its head: the expert's own choice
    assert int(contrastive_scores(e, a, 0.1, 0.0).argmax()) == 0


def test_contrastive_rejects_mismatched_vocabularies():
    with pytest.raises(ValueError, match="vocabulary"):
        contrastive_scores(torch.zeros(2, 5), torch.zeros(2, 6), 0.1, 1.0)


# -- classifier-free guidance ------------------------------------------------------------------

def test_cfg_endpoints_and_ruled_out_tokens():
    c, u = random_logits(2, 3, 20, seed=5), random_logits(2, 3, 20, seed=6)
    torch.testing.assert_close(cfg_scores(c, u, 1.0), torch.log_softmax(c, -1))
    torch.testing.assert_close(cfg_scores(c, u, 0.0), torch.log_softmax(u, -1))
    lc, lu = torch.log_softmax(c, -1), torch.log_softmax(u, -1)
    torch.testing.assert_close(cfg_scores(c, u, 2.5), lu + 2.5 * (lc - lu))
    c[..., 3] = NEG_INF
    for g in (0.0, -1.0, 1.5):
        s = cfg_scores(c, u, g)
        assert (s[..., 3] == NEG_INF).all() and not torch.isnan(s).any() and not (s == float("inf")).any()


class _FixedLM(torch.nn.Module):
    """A stand-in model for HF's processor: returns fixed logits for the unconditional branch."""

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.fixed = logits

    def forward(self, input_ids, **kwargs):
        from transformers.modeling_outputs import CausalLMOutputWithPast

        return CausalLMOutputWithPast(logits=self.fixed[:, None, :].expand(-1, input_ids.shape[1], -1))


@pytest.mark.parametrize("gamma", [0.0, 0.5, 1.5, 3.0, -1.0])
def test_cfg_equals_hf_processor(gamma):
    from transformers.generation.logits_process import UnbatchedClassifierFreeGuidanceLogitsProcessor

    c, u = random_logits(2, 30, seed=7), random_logits(2, 30, seed=8)
    proc = UnbatchedClassifierFreeGuidanceLogitsProcessor(gamma, _FixedLM(u), use_cache=False)
    hf = proc(torch.tensor([[5, 6, 7], [8, 9, 10]]), c.clone())
    torch.testing.assert_close(cfg_scores(c, u, gamma), hf)
