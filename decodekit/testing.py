"""Tiny, offline models and tokenizers for tests, docs and plugin authors.

``tiny_tokenizer()`` is a character-level tokenizer built in memory; ``tiny_model(arch, tok)``
a randomly initialised 2-layer Llama, GPT-2 or Qwen2 of matching vocabulary. Nothing is downloaded.
"""

from __future__ import annotations

import string
from typing import Any

import torch

DEFAULT_CHARS = string.ascii_lowercase + " .,!?'-:;{}[]\"0123456789\n"
SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>"]


def tiny_tokenizer(chars: str = DEFAULT_CHARS) -> Any:
    """A ``PreTrainedTokenizerFast`` with one token per character plus <pad> <eos> <bos> <unk>.

    Ids: 0 pad, 1 eos, 2 bos, 3 unk, then ``chars`` in order. No chat template.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(SPECIALS)}
    for c in chars:
        vocab.setdefault(c, len(vocab))
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    core.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>", unk_token="<unk>",
        clean_up_tokenization_spaces=False,
    )


def tiny_model(arch: str = "llama", tokenizer: Any = None, *, vocab_size: int | None = None, seed: int = 0,
               init_range: float = 0.2, **config: Any) -> Any:
    """A random 2-layer causal LM: ``arch`` in ``llama``, ``gpt2``, ``qwen2``.

    ``init_range`` is larger than the usual 0.02 so that next-token distributions are peaked,
    as a trained model's are (near-uniform logits make argmax ties, which no real model has).
    """
    from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig, Qwen2Config

    V = vocab_size or (len(tokenizer) if tokenizer is not None else 64)
    ids = dict(pad_token_id=0, eos_token_id=1, bos_token_id=2)
    if arch == "llama":
        cfg = LlamaConfig(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                          initializer_range=init_range, **ids, **config)
    elif arch == "qwen2":
        cfg = Qwen2Config(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                          initializer_range=init_range, **ids, **config)
    elif arch == "gpt2":
        cfg = GPT2Config(vocab_size=V, n_embd=32, n_layer=2, n_head=4, n_positions=1024,
                         initializer_range=init_range, **ids, **config)
    else:
        raise ValueError(f"unknown tiny architecture {arch!r}; use llama, gpt2 or qwen2")
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg)
    model.generation_config.pad_token_id = 0
    model.generation_config.eos_token_id = 1
    return model.eval()
