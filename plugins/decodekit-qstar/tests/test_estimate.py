"""The Transfer Q* estimate: direct transfer is the mean; indirect reweights by exp((r − r_BL)/β)."""

from __future__ import annotations

import math

import pytest
import torch

from decodekit_qstar import q_estimate, transfer_weights


def test_same_baseline_reward_is_the_identity_weighting():
    r = torch.tensor([[0.0, 3.0, 1.5, -2.0], [7.0, 7.0, 1.0, 0.5]], dtype=torch.float64)
    w = transfer_weights(r, r.clone(), beta=0.3)
    assert torch.equal(w, torch.full_like(r, 0.25))  # exactly 1/R, not approximately
    assert torch.equal(w, transfer_weights(r, None, beta=0.3))
    assert torch.equal(q_estimate(r, r.clone(), 0.3), q_estimate(r, None, 0.3))
    assert q_estimate(r, None, 1.0).tolist() == pytest.approx([0.625, 3.875])


def test_indirect_transfer_weights():
    r = torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64)
    r_bl = torch.tensor([1.0, 0.0, 5.0], dtype=torch.float64)
    beta = 0.5
    raw = [math.exp((a - b) / beta) for a, b in zip(r.tolist(), r_bl.tolist())]
    want = [x / sum(raw) for x in raw]
    assert transfer_weights(r, r_bl, beta).tolist() == pytest.approx(want)
    assert float(q_estimate(r, r_bl, beta)) == pytest.approx(sum(w * x for w, x in zip(want, r.tolist())))
    # a large β flattens the weights back towards the mean
    assert float(q_estimate(r, r_bl, 1e9)) == pytest.approx(float(r.mean()))


def test_beta_must_be_positive():
    with pytest.raises(ValueError, match="beta"):
        transfer_weights(torch.zeros(2), None, 0.0)
