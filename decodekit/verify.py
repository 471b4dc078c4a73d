"""Exact verification of a draft (chain or tree) against the processed target distribution p'.

Both functions walk the draft from the root. At the node reached so far (position ``j``; the root
is ``j = 0`` and node ``i`` is ``j = i + 1``) they look at its children in order.

* :func:`greedy_verdict`: accept the child whose token is argmax p'_j; stop when none is.
  The committed tokens are then exactly those plain greedy decoding would produce.
* :func:`sample_verdict`: recursive rejection sampling (SpecInfer's multi-step speculative
  sampling; Leviathan et al. / Chen et al. for a chain). Child ``c`` with token ``x`` drawn from
  ``q_c`` is accepted with probability ``min(1, p(x) / q_c(x))``; when it is rejected the target
  becomes the residual ``p ← norm(max(0, p − q_c))`` and the next sibling is tried against it.
  When every child is rejected (or there is none) the next token is drawn from the current p.
  A deterministic child has a one-hot ``q_c``: accept with ``p(x)``, residual ``p`` without ``x``.
  The token emitted at each position is then distributed exactly as p', provided each child was
  drawn independently from its ``q_c`` given its parent (true for chains, for i.i.d. sampled
  siblings, and trivially for deterministic drafts).
"""

from __future__ import annotations

import torch

from decodekit import reductions
from decodekit.types import Draft, Verdict


def greedy_verdict(draft: Draft | None, logprobs: torch.Tensor) -> Verdict:
    """``logprobs``: ``[J, V]`` log p' at the root and at each node of ``draft``."""
    best = reductions.argmax(logprobs).tolist()  # [J]
    accepted: list[int] = []
    node = -1
    while True:
        target = best[node + 1]
        nxt = None
        if draft is not None:
            for c in draft.children(node):
                if draft.tokens[c] == target:
                    nxt = c
                    break
        if nxt is None:
            return Verdict(accepted, target, float(logprobs[node + 1, target]))
        accepted.append(nxt)
        node = nxt


def sample_verdict(draft: Draft | None, logprobs: torch.Tensor, generator: torch.Generator | None) -> Verdict:
    """``logprobs``: ``[J, V]`` log p'; ``generator``: the row's random generator."""
    probs = logprobs.exp()
    accepted: list[int] = []
    node = -1
    while True:
        p = probs[node + 1]
        nxt = None
        if draft is not None:
            for c in draft.children(node):
                x = draft.tokens[c]
                u = float(torch.rand((), generator=generator, device=generator.device if generator else None))
                if draft.q is None:  # one-hot q: accept with p(x)
                    if u < float(p[x]):
                        nxt = c
                        break
                    p = p.clone()
                    p[x] = 0.0
                else:
                    q = draft.q[c].to(p.device, p.dtype)
                    qx = float(q[x])
                    if qx > 0 and u < min(1.0, float(p[x]) / qx):
                        nxt = c
                        break
                    residual = torch.clamp(p - q, min=0.0)
                    if float(residual.sum()) > 0:  # zero only if p == q, where acceptance was certain
                        p = residual
                total = float(p.sum())
                if total <= 0:
                    raise RuntimeError("target distribution has no mass left while verifying a draft")
                p = p / total
        if nxt is None:
            tok = int(torch.multinomial(p, 1, generator=generator))
            return Verdict(accepted, tok, float(logprobs[node + 1, tok]))
        accepted.append(nxt)
        node = nxt
