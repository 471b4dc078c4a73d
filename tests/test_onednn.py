"""``cpu_kernels: onednn``: packed oneDNN linears give the same results as torch's, and clear errors."""

from __future__ import annotations

import copy

import pytest
import torch

from decodekit import ConfigError, Pipeline
from decodekit import onednn
from decodekit.config import read_file, validate
from decodekit.testing import tiny_model

pytestmark = pytest.mark.skipif(not onednn.available(), reason="this torch build has no oneDNN")


def fresh(arch: str, tok) -> torch.nn.Module:
    return tiny_model(arch, tok)  # not the shared fixture: packing changes the model in place


@pytest.mark.parametrize("torch_rows", [0, 3])
@pytest.mark.parametrize("rows", [1, 2, 3, 4, 7, 16, 33])
def test_packed_linear_equals_linear(rows, torch_rows):
    torch.manual_seed(0)
    lin = torch.nn.Linear(48, 80, bias=True)
    packed = onednn.PackedLinear(lin)
    packed.torch_rows = torch_rows  # x holds 2 * rows rows: torch's kernel for rows = 1
    x = torch.randn(2, rows, 48)
    with torch.inference_mode():
        torch.testing.assert_close(packed(x), lin(x), rtol=1e-5, atol=1e-5)
    assert packed.weight is lin.weight and packed.out_features == 80
    twin = copy.deepcopy(packed)  # e.g. a truncated copy of the target as a draft model
    assert twin.weight is not packed.weight and twin.torch_rows == torch_rows
    with torch.inference_mode():
        torch.testing.assert_close(twin(x), packed(x))


needs_bf16 = pytest.mark.skipif(not onednn.bf16_available(), reason="no native bfloat16 on this CPU")


@needs_bf16
def test_bf16_rows_are_bitwise_the_same_for_any_row_count():
    """What keeps speculative decoding exact in bfloat16: a row's product does not depend on how
    many rows share the call (float32's kernels only promise ~1e-6). oneDNN's kernels for small
    products have this property; longer inputs are split into calls of the rows checked."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(576, 1536, bias=False).to(torch.bfloat16)
    packed = onednn.PackedLinear(lin)
    assert onednn.choose_invariant_rows([packed]) == {(1536, 576): packed.max_rows}
    assert packed.max_rows >= 1
    x = torch.randn(100, 576, dtype=torch.bfloat16)
    with torch.inference_mode():
        alone = torch.cat([packed(x[i:i + 1]) for i in range(100)])  # [100, 1536]
        torch.testing.assert_close(alone, lin(x))
        for rows in (2, 3, 4, 7, 16, 33, 100):
            assert torch.equal(packed(x[:rows]), alone[:rows]), rows
    assert copy.deepcopy(packed).max_rows == packed.max_rows


@needs_bf16
def test_bf16_models_are_checked_for_row_invariance_when_packed(tok):
    model = fresh("llama", tok).to(torch.bfloat16)
    onednn.pack_linears(model, measure=False)
    assert all(m.max_rows >= 1 for m in model.modules() if isinstance(m, onednn.PackedLinear))
    model = fresh("llama", tok)
    onednn.pack_linears(model, measure=False)  # float32: rows are not split (its kernels are not invariant)
    assert all(m.max_rows == 0 for m in model.modules() if isinstance(m, onednn.PackedLinear))


@needs_bf16
def test_bf16_prefill_is_one_product_per_prompt_and_batches_as_single_rows(tok):
    """A prefill is computed the same way by every decoding of a prompt, so its rows need only a
    single-row prefill's products, not row invariance: each row's prompt (after its padding) is one
    product over its own tokens, not split into calls of max_rows; other passes still are. A padded
    batch then gets each row's logits bitwise as a prefill of that prompt alone, and so do the
    passes after it."""
    from decodekit.attention import use_cpu_attention
    from decodekit.kv import CachedLM
    from decodekit.types import Draft

    model = fresh("llama", tok).to(torch.bfloat16)
    use_cpu_attention(model)
    onednn.pack_linears(model, measure=False)
    layer = model.model.layers[0].mlp.up_proj
    products = []  # rows of each product the layer makes
    kernel = layer._rows
    layer._rows = lambda flat: (products.append(flat.shape[0]), kernel(flat))[1]
    limit = layer.max_rows
    V = len(tok)
    prompts = [torch.randint(3, V, (n,), generator=torch.Generator().manual_seed(n)).tolist()
               for n in (limit + 40, limit + 7, 5)]
    chains = [[7, 8, 9], [10, 11], [12, 13, 14]]

    def run(rows: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """The prefill's logits ``[B, V]`` and those of a verify pass after it ``[B, 3, V]``."""
        lm = CachedLM(model, batch_size=len(rows))
        prefill = lm.forward([prompts[r] for r in rows])
        lm.commit([[]] * len(rows))
        verify = lm.forward([chains[r][:1] for r in rows], [Draft.chain(chains[r][1:]) for r in rows])
        return prefill[:, 0], verify

    alone = []
    for r in range(3):
        products.clear()
        alone.append(run([r]))
        assert products == [len(prompts[r]), len(chains[r])]
    products.clear()
    prefill, verify = run([0, 1, 2])  # rows 1 and 2 left-padded
    assert products == [len(p) for p in prompts] + [3 * 3]  # a product per prompt; the verify pass: one
    for r in range(3):
        assert torch.equal(prefill[r], alone[r][0][0]), r
        assert torch.equal(verify[r, :len(chains[r])], alone[r][1][0, :len(chains[r])]), r
    lm = CachedLM(model, batch_size=1)  # a long pass that is not a prefill (something is cached): split
    lm.forward([prompts[2]])
    lm.commit([[]])
    products.clear()
    lm.forward([prompts[0]])
    assert products == [limit] * (len(prompts[0]) // limit) + [len(prompts[0]) % limit]


@needs_bf16
def test_bf16_speculative_is_token_identical_with_packed_kernels(tok):
    def model():
        return fresh("llama", tok).to(torch.bfloat16)
    dec = {"max_new_tokens": 24}
    plain = Pipeline(model(), tokenizer=tok, decoding=dec, cpu_kernels="onednn")
    for proposer in ("prompt_lookup", "token_recycling"):
        pipe = Pipeline(model(), tokenizer=tok, decoding=dec, cpu_kernels="onednn",
                        plugins=[{"name": "speculative", "proposer": proposer, "verify_costs": {1: 1.0, 64: 1.0}}])
        for p in ["abc abc abc abc", "hello hello world hello"]:
            assert pipe.generate(p).token_ids == plain.generate(p).token_ids, (proposer, p)


def test_small_row_kernels_are_chosen_per_weight_shape(tok):
    model = fresh("llama", tok)
    assert onednn.pack_linears(model, measure=False) > 0
    layers = [m for m in model.modules() if isinstance(m, onednn.PackedLinear)]
    assert all(m.torch_rows == 0 for m in layers)
    chosen = onednn.choose_small_row_kernels(layers, reps=3)
    assert set(chosen) == {(m.out_features, m.in_features) for m in layers}
    for m in layers:  # every layer of a shape runs what was timed faster for it
        assert m.torch_rows == chosen[(m.out_features, m.in_features)]
        assert m.torch_rows in (0, *onednn.SMALL_ROWS)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_packed_model_keeps_logits_and_greedy_tokens(arch, tok):
    plain = Pipeline(fresh(arch, tok), tokenizer=tok, decoding={"max_new_tokens": 16})
    model = fresh(arch, tok)
    packed = Pipeline(model, tokenizer=tok, decoding={"max_new_tokens": 16}, cpu_kernels="onednn")
    assert any(isinstance(m, onednn.PackedLinear) for m in model.modules())
    assert not any(type(m) is torch.nn.Linear for m in model.modules())
    ids = torch.tensor([plain.encode("the quick brown fox")])
    with torch.inference_mode():
        torch.testing.assert_close(packed.model(ids).logits, plain.model(ids).logits, rtol=1e-4, atol=1e-4)
    for p in ["hello world", "1, 2, 3, 4,", "abc abc abc"]:
        assert packed.generate(p).token_ids == plain.generate(p).token_ids, p


def test_speculative_stays_exact_with_packed_kernels(tok):
    plain = Pipeline(fresh("llama", tok), tokenizer=tok, decoding={"max_new_tokens": 24})
    model = fresh("llama", tok)
    pipe = Pipeline(model, tokenizer=tok, decoding={"max_new_tokens": 24}, cpu_kernels="onednn",
                    plugins=[{"name": "speculative", "proposer": "prompt_lookup", "verify_costs": {1: 1.0, 64: 1.0}}])
    for p in ["abc abc abc abc", "hello hello world hello"]:
        r = pipe.generate(p)
        assert r.token_ids == plain.generate(p).token_ids, p
    assert r.stats.row_passes < len(r.token_ids)  # drafts were accepted, through the packed kernels


def test_bad_cpu_kernels_are_clear_errors(tok):
    with pytest.raises(ConfigError, match="cpu_kernels"):
        Pipeline(fresh("llama", tok), tokenizer=tok, cpu_kernels="fast")
    half = fresh("llama", tok).to(torch.float16)
    with pytest.raises(ConfigError, match="float32 or bfloat16 model on the CPU; this one is float16 on cpu"):
        Pipeline(half, tokenizer=tok, cpu_kernels="onednn")


def test_bf16_without_native_support_is_a_clear_error(tok, monkeypatch):
    monkeypatch.setattr(onednn, "bf16_available", lambda: False)
    with pytest.raises(ConfigError, match="native bfloat16"):
        Pipeline(fresh("llama", tok).to(torch.bfloat16), tokenizer=tok, cpu_kernels="onednn")


def test_pipeline_file_takes_cpu_kernels(tmp_path):
    cfg = tmp_path / "p.yaml"
    cfg.write_text("cpu_kernels: onednn\ndecoding: {max_new_tokens: 4}\n")
    assert validate(read_file(cfg), str(cfg)).config.cpu_kernels == "onednn"
    cfg.write_text("cpu_kernels: turbo\n")
    with pytest.raises(ConfigError, match="cpu_kernels"):
        validate(read_file(cfg), str(cfg))


@pytest.mark.embedded
def test_embedded_model_greedy_is_unchanged_by_packed_kernels(embedded):
    packed = Pipeline("smollm2-135m", cpu_kernels="onednn")
    assert packed.model is not embedded.model  # loaded and cached apart from the plain model
    for p in ["What is the capital of France?", "Write a haiku about the sea.", "Why do cats purr?"]:
        assert packed.generate(p, max_new_tokens=32).token_ids == embedded.generate(p, max_new_tokens=32).token_ids, p
