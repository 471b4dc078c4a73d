"""Exact search for the most probable span: score every span of up to ``L`` tokens.

For a prompt ``x`` and a candidate answer ``y = y_1 .. y_l`` followed by an EOS token ``e``::

    log P(y, e | x) = sum_{t=1..l} log p(y_t | x, y_<t) + log p(e | x, y)

Every span is a prefix of one *source* (a run of passage tokens from a start, or an alternative
opening followed by the passage; see :mod:`decodekit_span.automaton`), so one forward pass over
``x + source`` gives the scores of all of that source's prefixes at once: the token terms are a
cumulative sum and the EOS term is read at each length. Sources are batched: the prompt is cached
once and copied to ``chunk`` rows, and each row's source goes in as a chain draft.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from decodekit.kv import CachedLM
from decodekit.types import Draft


@dataclass(frozen=True)
class Best:
    """The best span: its tokens, the EOS that ends it, and ``log P(tokens, eos | prompt)``."""

    tokens: tuple[int, ...]
    eos: int
    logprob: float


@torch.inference_mode()
def best_span(model, prompt: list[int], sources: list[tuple[list[int], int]], eos_ids: list[int],
              *, pad_token_id: int = 0, chunk: int = 32) -> Best:
    """The highest ``log P(span, eos | prompt)`` over all prefixes allowed by ``sources``."""
    if not prompt:
        raise ValueError("span: exact search needs a non-empty prompt")
    if not eos_ids:
        raise ValueError("span: exact search needs an EOS token to end the answer")
    head, last = prompt[:-1], prompt[-1]
    lm = CachedLM(model, 1, pad_token_id)
    if head:
        lm.forward([head])
        lm.commit([[]])
    eos = torch.tensor(sorted(eos_ids))
    best: Best | None = None
    for lo in range(0, len(sources), chunk):
        part = sources[lo:lo + chunk]
        c = len(part)
        lm.reorder([0] * c)  # c copies of the cached prompt head
        logits = lm.forward([[last]] * c, [Draft.chain(toks) for toks, _ in part])  # [c, 1 + L, V]
        if head:
            lm.commit([[] for _ in range(c)])
            lm.rollback([len(head)] * c)  # drop `last` again: the next chunk feeds it afresh
        else:
            lm = CachedLM(model, 1, pad_token_id)  # nothing to share: start the next chunk empty
        lp = torch.log_softmax(logits.float(), dim=-1)  # [c, 1 + L, V]
        eos_lp, eos_arg = lp[:, :, eos].max(dim=-1)  # [c, 1 + L]: best EOS after j answer tokens
        for r, (toks, min_len) in enumerate(part):
            m = len(toks)
            tok_lp = lp[r, torch.arange(m), torch.tensor(toks)]  # [m]: log p(y_t | x, y_<t)
            total = tok_lp.cumsum(0) + eos_lp[r, 1:m + 1]  # [m]: score of the prefix of length l = idx+1
            total[: min_len - 1] = float("-inf")  # an unfinished alternative opening is no span
            l = int(total.argmax())
            score = float(total[l])
            if best is None or score > best.logprob:
                best = Best(tuple(toks[:l + 1]), int(eos[eos_arg[r, l + 1]]), score)
    assert best is not None
    return best


def sequence_logprob(model, prompt: list[int], answer: list[int]) -> float:
    """``log P(answer | prompt)`` by one plain forward pass (no cache): a reference for tests."""
    with torch.inference_mode():
        ids = torch.tensor([prompt + answer])
        lp = torch.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)  # [T, V]
        n = len(prompt)
        return float(sum(lp[n - 1 + t, a] for t, a in enumerate(answer)))
