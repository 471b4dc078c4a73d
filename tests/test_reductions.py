"""decodekit.reductions: blocked argmax / top-k give torch's answers."""

import pytest
import torch

from decodekit import reductions
from decodekit.reductions import BLOCK


def _rows(V: int, seed: int) -> torch.Tensor:
    """Random rows, rows of many ties (small integers), a row with -inf outside one block, an all -inf row."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(6, V, generator=g)
    x[1] = torch.randint(0, 3, (V,), generator=g).float()        # the max tied across many blocks
    x[2] = float("-inf")
    x[2, 5 * BLOCK + 7] = 0.0                                    # a masked row: one allowed token
    x[3] = float("-inf")                                         # nothing allowed
    x[4, -1] = 100.0                                             # the max in the last block
    return x


@pytest.mark.parametrize("V", [BLOCK * 8, 49152])
def test_argmax_is_torchs_first_maximum(V):
    for seed in range(5):
        x = _rows(V, seed)
        assert torch.equal(reductions.argmax(x), x.argmax(dim=-1))
        assert torch.equal(reductions.argmax(x[0]), x[0].argmax(dim=-1))           # one row
        y = x.reshape(2, 3, V)
        assert torch.equal(reductions.argmax(y), y.argmax(dim=-1))                 # leading dims kept


@pytest.mark.parametrize("V,k", [(BLOCK * 8, 1), (BLOCK * 8, 2), (49152, 8), (49152, 32)])
def test_topk_has_torchs_values_and_valid_indices(V, k):
    for seed in range(5):
        x = _rows(V, seed)
        values, index = reductions.topk(x, k)
        ref = torch.topk(x, k, dim=-1)
        assert torch.equal(values, ref.values)
        assert torch.equal(x.gather(-1, index), values)                            # indices point at them
        assert all(len(set(r)) == k for r in index.tolist())                       # k distinct tokens
        untied = [0, 4]  # random rows: no ties, so the indices are torch's too
        assert torch.equal(index[untied], ref.indices[untied])


def test_nan_rows_and_other_shapes_fall_back_to_torch():
    x = torch.randn(3, BLOCK * 8)
    x[1, 70] = float("nan")
    assert torch.equal(reductions.argmax(x), x.argmax(dim=-1))
    v, i = reductions.topk(x, 3)
    ref = torch.topk(x, 3, dim=-1)
    assert torch.equal(i, ref.indices) and torch.equal(v.isnan(), ref.values.isnan())
    odd = torch.randn(4, 1000)  # not a multiple of BLOCK
    assert torch.equal(reductions.argmax(odd), odd.argmax(dim=-1))
    assert torch.equal(reductions.topk(odd, 5)[1], torch.topk(odd, 5, dim=-1).indices)
