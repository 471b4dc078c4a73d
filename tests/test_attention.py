"""decodekit_sdpa: grouped-query attention in masked multi-token passes without K/V copies, bitwise
the same as transformers' sdpa."""

from __future__ import annotations

import pytest
import torch
import transformers.integrations.sdpa_attention as hf_sdpa
from decodekit.attention import NAME, use_cpu_gqa
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
