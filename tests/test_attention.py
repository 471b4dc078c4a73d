"""decodekit_sdpa: grouped-query attention in masked multi-token passes without K/V copies, bitwise
the same as transformers' sdpa; and bfloat16's pass-invariant attention (invariant_attention.py)."""

from __future__ import annotations

import pytest
import torch
import transformers.integrations.sdpa_attention as hf_sdpa
from decodekit import invariant_attention, native
from decodekit.attention import NAME, use_cpu_attention, use_cpu_gqa
from decodekit.kv import CachedLM
from decodekit.testing import tiny_model
from decodekit.types import Draft


def passes(model) -> list[torch.Tensor]:
    """Logits of the passes a speculative batch makes: a padded prefill of two rows of different
    lengths, a chain draft, then a tree draft (a 4-D float mask)."""
    lm = CachedLM(model, batch_size=2)
    out = [lm.forward([[5, 6, 7, 8, 9], [10, 11]])]
    lm.commit([[], []])
    out.append(lm.forward([[12], [13]], [Draft.chain([14, 15, 16]), Draft.chain([17, 18])]))
    lm.commit([[0], [0, 1]])
    out.append(lm.forward([[19], [20]], [Draft([21, 22, 23], [-1, -1, 0]), None]))
    lm.commit([[1], []])
    out.append(lm.forward([[24], [25]]))
    return out


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_outputs_are_bitwise_those_of_sdpa(tok, arch):
    reference, switched = tiny_model(arch, tok), tiny_model(arch, tok)
    assert use_cpu_gqa(switched) and switched.config._attn_implementation == NAME
    for a, b in zip(passes(reference), passes(switched)):
        assert torch.equal(a, b)


def test_masked_passes_copy_no_kv_heads(tok, monkeypatch):
    calls = []
    real = hf_sdpa.repeat_kv
    monkeypatch.setattr(hf_sdpa, "repeat_kv", lambda h, n: calls.append(h.shape) or real(h, n))
    passes(tiny_model("llama", tok))
    assert calls, "sdpa repeats K/V in these passes: the case this module is for"
    calls.clear()
    model = tiny_model("llama", tok)
    use_cpu_gqa(model)
    passes(model)
    assert calls == []


def test_models_it_does_not_apply_to_are_left_alone(tok):
    gpt2 = tiny_model("gpt2", tok)  # one key/value head per query head: nothing to save
    assert not use_cpu_gqa(gpt2) and gpt2.config._attn_implementation == "sdpa"
    eager = tiny_model("llama", tok, attn_implementation="eager")
    assert not use_cpu_gqa(eager) and eager.config._attn_implementation == "eager"


# --- bfloat16 on a CPU: attention whose result for a position does not depend on the pass ---

def bf16_model(arch: str, tok) -> torch.nn.Module:
    """A random 2-layer model with 64-dimensional heads in bfloat16: wide enough that torch's own
    CPU attention gives positions different logits in a pass over several tokens than in
    single-token passes (it does for qwen2 and gpt2 here), which is what these tests rule out."""
    from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig, Qwen2Config

    V = len(tok)
    cfg = {"llama": LlamaConfig, "qwen2": Qwen2Config}.get(arch)
    if cfg is not None:
        cfg = cfg(vocab_size=V, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, initializer_range=0.1)
    else:
        cfg = GPT2Config(vocab_size=V, n_embd=256, n_layer=2, n_head=4, initializer_range=0.1, bos_token_id=2,
                         eos_token_id=1)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg).eval().to(torch.bfloat16)
    assert use_cpu_attention(model) == invariant_attention.NAME
    return model


def random_tokens(n: int, V: int, seed: int) -> list[int]:
    return torch.randint(3, V, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


@pytest.fixture(params=["amx", "vectors", "torch"])
def bf16_path(request, monkeypatch):
    """Every way a bfloat16 pass is computed: decodekit's kernel (native.py) in AMX tiles or in
    AVX-512 vectors, and torch's sdpa one query at a time where the kernel is not built."""
    if request.param == "torch":
        monkeypatch.setattr(native, "supports", lambda query, key, value: False)
        yield request.param
        return
    if native.kernel() is None:
        pytest.skip("no AVX-512 BF16 kernel on this machine")
    with native.kernel_path(request.param == "amx") as available:
        if not available:
            pytest.skip("no AMX tiles here")
        yield request.param


def stepwise(model, prompt: list[int], tokens: list[int]) -> torch.Tensor:
    """Logits ``[1 + n, V]`` after ``prompt`` (its prefill) and after each of ``tokens``, one plain
    pass per token."""
    lm = CachedLM(model, batch_size=1)
    out = [lm.forward([prompt])[0, 0]]
    lm.commit([[]])
    for t in tokens:
        out.append(lm.forward([[t]])[0, 0])
        lm.commit([[]])
    return torch.stack(out)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2"])
def test_bf16_verify_passes_score_exactly_as_plain_steps(tok, arch, bf16_path):
    model = bf16_model(arch, tok)
    prompt, chain = random_tokens(150, len(tok), 1), random_tokens(12, len(tok), 2)
    plain = stepwise(model, prompt, chain)  # [13, V]
    lm = CachedLM(model, batch_size=1)
    assert torch.equal(lm.forward([prompt])[0, 0], plain[0])
    lm.commit([[]])
    # one pass over the chain: its first token pending, the rest a draft
    assert torch.equal(lm.forward([chain[:1]], [Draft.chain(chain[1:])])[0], plain[1:])
    lm.commit([[]])
    lm.rollback([len(prompt)])  # back to before the chain's pass
    other = [(t + 1) % len(tok) or 3 for t in chain]
    tree = lm.forward([chain[:1]], [Draft([chain[1], other[1], chain[2], other[2], chain[3]],
                                          [-1, -1, 0, 0, 2])])[0]  # siblings in between
    assert torch.equal(tree[[0, 1, 3, 5]], plain[1:5])


def test_bf16_padded_batch_rows_score_as_single_rows(tok, bf16_path):
    model = bf16_model("qwen2", tok)
    prompts = [random_tokens(150, len(tok), 3), random_tokens(40, len(tok), 4)]
    chains = [random_tokens(6, len(tok), 5), random_tokens(3, len(tok), 6)]
    lm = CachedLM(model, batch_size=2)
    prefill = lm.forward(prompts)  # the second row is left-padded by 110 columns
    lm.commit([[], []])
    batch = lm.forward([c[:1] for c in chains], [Draft.chain(c[1:]) for c in chains])  # [2, 6, V]
    for b in range(2):
        alone = stepwise(model, prompts[b], chains[b])
        assert torch.equal(prefill[b, 0], alone[0])
        assert torch.equal(batch[b, :len(chains[b])], alone[1:])


def test_a_prefill_is_one_call_per_prompt(tok, monkeypatch):
    """A prefill gives each row's prompt one causal call over its own tokens, padded or not."""
    model = bf16_model("llama", tok)
    calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def counted(q, k, v, **kw):
        calls.append((q.shape[2], k.shape[2], kw.get("is_causal", False)))
        return sdpa(q, k, v, **kw)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", counted)
    CachedLM(model, batch_size=2).forward([random_tokens(9, len(tok), 7), random_tokens(5, len(tok), 8)])
    assert calls == [(9, 9, True), (5, 5, True)] * model.config.num_hidden_layers
    assert invariant_attention.prefill_is_one_call(model)
    assert not invariant_attention.prefill_is_one_call(tiny_model("llama", tok))


def test_invariant_attention_matches_sdpa_and_sees_no_nan():
    torch.manual_seed(0)
    q = torch.randn(2, 6, 5, 16)              # [B, H, Q, D]
    k, v = torch.randn(2, 2, 9, 16), torch.randn(2, 2, 9, 16)  # [B, Hkv, C, D]
    mask = torch.ones(2, 1, 5, 9, dtype=torch.bool).tril(4)
    mask[1, :, :, :3] = False                 # row 1 is left-padded by 3 columns
    mask[1, :, 0] = False                     # ... and its first query sees no key at all
    module = torch.nn.Module()
    out, _ = invariant_attention.invariant_attention(module, q, k, v, mask)  # [B, Q, H, D]
    ref = torch.nn.functional.scaled_dot_product_attention(q.double(), k.double(), v.double(),
                                                           attn_mask=mask, enable_gqa=True).transpose(1, 2)
    seen = mask[:, 0].any(-1)                 # [B, Q]: queries that see some key
    torch.testing.assert_close(out[seen], ref[seen].float())
    assert torch.equal(out[~seen], torch.zeros_like(out[~seen]))  # zeros, not NaN
    causal, _ = invariant_attention.invariant_attention(module, q[:, :, :, :], k[:, :, :5], v[:, :, :5], None)
    ref = torch.nn.functional.scaled_dot_product_attention(q, k[:, :, :5], v[:, :, :5], is_causal=True,
                                                           enable_gqa=True).transpose(1, 2)
    torch.testing.assert_close(causal, ref)


def test_float32_models_keep_sdpa_numerics(tok):
    model = tiny_model("llama", tok)
    assert use_cpu_attention(model) == NAME  # float32 with grouped-query attention: decodekit_sdpa
    assert use_cpu_attention(tiny_model("gpt2", tok)) is None
