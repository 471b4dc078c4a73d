"""decodekit's bfloat16 attention kernel (decodekit/attention_bf16.c through native.py): close
to exact attention, and each query's result is a function of that query and its keys alone."""

from __future__ import annotations

import pytest
import torch

from decodekit import native

needs_kernel = pytest.mark.skipif(native.kernel() is None, reason="no AVX-512 BF16 kernel on this machine")


@pytest.fixture(params=["amx", "vectors"])
def kernel_path(request):
    """Both ways the kernel computes: AMX tiles (where the CPU and the OS have them) and AVX-512 vectors."""
    with native.kernel_path(request.param == "amx") as available:
        if not available:
            pytest.skip("no AMX tiles here")
        yield request.param


def reference(q, k, v, counts, cols):
    """Float64 attention: query i of row b over its keys (``cols[b, i, :n]`` or the first n)."""
    B, H, Q, D = q.shape
    out = torch.zeros(B, Q, H, D, dtype=torch.float64)
    for b in range(B):
        for i in range(Q):
            n = int(counts[b, i])
            if n == 0:
                continue
            at = cols[b, i, :n].long() if cols is not None else torch.arange(n)
            kk = k[b, :, at].double().repeat_interleave(H // k.shape[1], 0)  # [H, n, D]
            vv = v[b, :, at].double().repeat_interleave(H // k.shape[1], 0)
            w = (q[b, :, i, None].double() @ kk.transpose(1, 2) / D ** 0.5).softmax(-1)  # [H, 1, n]
            out[b, i] = (w @ vv)[:, 0]
    return out


def random_pass(B, H, Hkv, Q, C, D, seed, gather):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, Q, D, generator=g).bfloat16()
    k, v = torch.randn(B, Hkv, C, D, generator=g).bfloat16(), torch.randn(B, Hkv, C, D, generator=g).bfloat16()
    counts = torch.randint(0, C + 1, (B, Q), generator=g, dtype=torch.int32)
    cols = None
    if gather:  # each query sees a random ordered subset of the columns, as many as its count
        cols = torch.zeros(B, Q, C, dtype=torch.int32)
        for b in range(B):
            for i in range(Q):
                n = int(counts[b, i])
                cols[b, i, :n] = torch.randperm(C, generator=g)[:n].sort().values
    return q, k, v, counts, cols


@needs_kernel
@pytest.mark.parametrize("D", [32, 64, 96, 128])
@pytest.mark.parametrize("H,Hkv", [(4, 4), (6, 2), (9, 3), (8, 1), (32, 1)])
@pytest.mark.parametrize("C,gather", [(1, False), (37, True), (600, False)])
def test_kernel_is_attention(D, H, Hkv, C, gather, kernel_path):
    q, k, v, counts, cols = random_pass(2, H, Hkv, 3, C, D, seed=D + H + C, gather=gather)
    out = native.attention(q, k, v, counts, cols, C, D ** -0.5)  # [B, Q, H, D]
    torch.testing.assert_close(out.double(), reference(q, k, v, counts, cols), atol=2e-2, rtol=2e-2)
    assert not out.isnan().any()
    assert torch.equal(out[counts == 0], torch.zeros_like(out[counts == 0]))  # sees nothing: zeros


@needs_kernel
def test_a_query_gets_the_same_bits_alone_and_in_any_pass(kernel_path):
    """The same query over the same keys: alone with its own keys, in a pass of other queries
    with a longer cache, and reading its keys by column numbers from a shuffled cache."""
    q, k, v, _, _ = random_pass(1, 9, 3, 5, 300, 64, seed=1, gather=False)
    counts = torch.tensor([[296, 297, 298, 299, 300]], dtype=torch.int32)
    together = native.attention(q, k, v, counts, None, 300, 0.125)  # [1, 5, 9, 64]
    perm = torch.randperm(300, generator=torch.Generator().manual_seed(2))
    where = torch.empty_like(perm)
    where[perm] = torch.arange(300)                                   # column of key j in the shuffle
    ks, vs = k[:, :, perm].contiguous(), v[:, :, perm].contiguous()  # key j now at column where[j]
    for i, n in enumerate(counts[0].tolist()):
        alone = native.attention(q[:, :, i:i + 1].contiguous(), k[:, :, :n].contiguous(), v[:, :, :n].contiguous(),
                                 torch.tensor([[n]], dtype=torch.int32), None, n, 0.125)
        assert torch.equal(alone[0, 0], together[0, i])
        cols = where[:n].int()[None, None].contiguous()
        shuffled = native.attention(q[:, :, i:i + 1].contiguous(), ks, vs, torch.tensor([[n]], dtype=torch.int32),
                                    cols, n, 0.125)
        assert torch.equal(shuffled[0, 0], together[0, i])


@needs_kernel
@pytest.mark.parametrize("prefix", [64, 70, 95])
def test_tree_queries_get_the_bits_of_their_own_path_alone(kernel_path, prefix):
    """A tree pass: 20 queries over ``prefix`` cached columns and the tree's nodes, each seeing the
    prefix, then its ancestors and itself (columns after the prefix, not contiguous). Each gets the
    bits of a pass over that query alone after exactly its keys, in order: the keys a plain step
    sees once the path is accepted. Sizes cross the kernel's blocks of 16 and 32 keys and its
    tiles of 16 query-heads."""
    Q, H, Hkv, D = 20, 9, 3, 64
    q, k, v, _, _ = random_pass(1, H, Hkv, Q, prefix + Q, D, seed=prefix, gather=False)
    g = torch.Generator().manual_seed(prefix + 1)
    parents = [-1] + [int(torch.randint(-1, i, (), generator=g)) for i in range(1, Q)]
    paths = []
    for i in range(Q):
        path, node = [], i
        while node >= 0:
            path.append(prefix + node)
            node = parents[node]
        paths.append(list(range(prefix)) + path[::-1])
    most = max(len(p) for p in paths)
    counts = torch.tensor([[len(p) for p in paths]], dtype=torch.int32)
    cols = torch.zeros(1, Q, most, dtype=torch.int32)
    for i, p in enumerate(paths):
        cols[0, i, :len(p)] = torch.tensor(p, dtype=torch.int32)
    tree = native.attention(q, k, v, counts, cols, most, 0.125)  # [1, Q, H, D]
    torch.testing.assert_close(tree.double(), reference(q, k, v, counts, cols), atol=2e-2, rtol=2e-2)
    for i, p in enumerate(paths):
        at = torch.tensor(p)
        alone = native.attention(q[:, :, i:i + 1].contiguous(), k[:, :, at].contiguous(), v[:, :, at].contiguous(),
                                 torch.tensor([[len(p)]], dtype=torch.int32), None, len(p), 0.125)
        assert torch.equal(alone[0, 0], tree[0, i]), i


@needs_kernel
def test_the_two_paths_agree_to_rounding():
    """AMX tiles and AVX-512 vectors sum in different orders: close, not bitwise equal."""
    q, k, v, counts, cols = random_pass(2, 9, 3, 4, 200, 64, seed=5, gather=True)
    with native.kernel_path(True) as available:
        if not available:
            pytest.skip("no AMX tiles here")
        tiles = native.attention(q, k, v, counts, cols, 200, 0.125)
    with native.kernel_path(False):
        vectors = native.attention(q, k, v, counts, cols, 200, 0.125)
    torch.testing.assert_close(tiles.float(), vectors.float(), atol=2e-2, rtol=2e-2)


def test_no_compiler_means_no_kernel(tmp_path, monkeypatch):
    """Without a C compiler decodekit keeps torch's attention (invariant_attention.py) and says why
    in its log; nothing fails."""
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    monkeypatch.setenv("DECODEKIT_CACHE", str(tmp_path))
    native.kernel.cache_clear()
    try:
        assert native.kernel() is None
        x = torch.zeros(1, 4, 1, 64, dtype=torch.bfloat16)
        assert not native.supports(x, x, x)
    finally:
        native.kernel.cache_clear()


def test_decodekit_native_0_turns_the_kernel_off(monkeypatch):
    monkeypatch.setenv("DECODEKIT_NATIVE", "0")
    native.kernel.cache_clear()
    try:
        assert native.kernel() is None
    finally:
        native.kernel.cache_clear()


def test_an_unwritable_cache_means_no_kernel(tmp_path, monkeypatch):
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    monkeypatch.setenv("DECODEKIT_CACHE", str(blocked))  # the kernel's folder cannot be made here
    native.kernel.cache_clear()
    try:
        assert native.kernel() is None
    finally:
        native.kernel.cache_clear()
