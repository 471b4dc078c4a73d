"""A tiny model whose next-token distribution is set by hand, and exact grammar-conditioned
distributions over a finite language: the ground truth for the ASAp tests and benchmark. Also
the invoice JSON Schema (and a document of it) that the mask benchmark and tests walk along."""

from __future__ import annotations

import itertools
import math
import re

import torch


def handset_model(tokenizer, probs: dict[int, float]):
    """A GPT-2 whose next-token distribution is ``probs`` (token id -> probability) after any prefix.

    The final layer norm is zeroed except its bias ``e_0``, so the last hidden state is ``e_0``
    whatever the input, and the tied output layer gives ``logits[v] = wte[v, 0]``; we set that
    column to ``log probs[v]`` (ids missing from ``probs`` share what is left).
    """
    from decodekit.testing import tiny_model

    V = len(tokenizer)
    rest = (1.0 - sum(probs.values())) / max(1, V - len(probs))
    logits = torch.tensor([math.log(probs.get(v, rest)) for v in range(V)])
    model = tiny_model("gpt2", tokenizer, seed=0)
    with torch.no_grad():
        model.transformer.ln_f.weight.zero_()
        model.transformer.ln_f.bias.zero_()
        model.transformer.ln_f.bias[0] = 1.0
        model.transformer.wte.weight[:, 0] = logits
    return model


def exact_conditional(alphabet: dict[str, float], regex: str, max_len: int) -> dict[str, float]:
    """``P(s | s matches regex)`` for a context-free-of-history model with char probabilities
    ``alphabet`` (EOS, equally likely after every string, cancels), over strings up to ``max_len``."""
    weights = {}
    for n in range(max_len + 1):
        for chars in itertools.product(alphabet, repeat=n):
            s = "".join(chars)
            if re.fullmatch(regex, s):
                weights[s] = math.prod(alphabet[c] for c in s)
    z = sum(weights.values())
    return {s: w / z for s, w in weights.items()}


def kl(empirical: dict[str, int], exact: dict[str, float]) -> float:
    """``KL(empirical ‖ exact) = Σ_s e(s) log(e(s) / p(s))`` (nats); ``e`` from counts."""
    n = sum(empirical.values())
    out = 0.0
    for s, k in empirical.items():
        if k:
            e = k / n
            out += e * math.log(e / exact[s]) if s in exact else math.inf
    return out


CLOSERS = {b'"', b"}", b"]", b"0", b"1", b"true", b"null", b'"}', b'"]', b"}}", b"]}", b"},", b'",', b", ", b'":', b": "}


_CLOSER_MASKS: dict[int, tuple[object, object]] = {}


def _closers(vocab):
    """numpy bool ``[vocab.size]``: which tokens are in ``CLOSERS`` (built once per vocabulary;
    testing membership token by token over a 49k-token allowed set cost ~5 ms per walk step)."""
    import numpy as np

    hit = _CLOSER_MASKS.get(id(vocab))
    if hit is None or hit[0] is not vocab:
        mask = np.array([t in CLOSERS for t in vocab.tokens[: vocab.size]], dtype=bool)
        hit = _CLOSER_MASKS[id(vocab)] = (vocab, mask)
    return hit[1]


def random_walk(automaton, vocab, rng, max_steps: int = 400, stop: float = 0.3, prefer: float = 0.7) -> bytes | None:
    """A model-free output of ``automaton``: tokens drawn uniformly among the allowed ones (with
    probability ``prefer`` among allowed JSON closers when there are some), stopping with
    probability ``stop`` in accepting states. None when it runs out of steps. Used to check that
    a compiled JSON Schema only admits valid documents, without a model."""
    import numpy as np

    is_closer = _closers(vocab)
    state, out = automaton.initial(), b""
    for _ in range(max_steps):
        allowed = np.flatnonzero(automaton.allowed(state))
        if automaton.accepting(state) and (len(allowed) == 0 or rng.random() < stop):
            return out
        if len(allowed) == 0:
            raise AssertionError("a live state with no allowed token that cannot end")
        closing = allowed[is_closer[allowed]]  # same ids, same order as a scan of ``allowed``
        t = int(rng.choice(closing if len(closing) and rng.random() < prefer else allowed))
        out += vocab.tokens[t]
        state = automaton.step(state, t)
    return None


# A small real-world JSON Schema: an invoice with line items (benchmarks/grammar.py, tests).
INVOICE = {
    "type": "object",
    "properties": {
        "invoice_id": {"type": "string", "pattern": "^INV-[0-9]{4}$"},
        "customer": {"type": "object", "properties": {"name": {"type": "string"}, "email": {"type": "string"}},
                     "required": ["name", "email"], "additionalProperties": False},
        "items": {"type": "array", "minItems": 1, "items": {
            "type": "object",
            "properties": {"sku": {"type": "string"}, "quantity": {"type": "integer"}, "price": {"type": "number"}},
            "required": ["sku", "quantity", "price"], "additionalProperties": False}},
        "paid": {"type": "boolean"},
    },
    "required": ["invoice_id", "customer", "items", "paid"],
    "additionalProperties": False,
}
INVOICE_TEXT = ('{"invoice_id": "INV-0042", "customer": {"name": "Ada Lovelace", "email": "ada@example.com"}, '
                '"items": [{"sku": "A-1", "quantity": 2, "price": 9.5}, {"sku": "B-22", "quantity": 1, "price": 120.0}], '
                '"paid": false}')
