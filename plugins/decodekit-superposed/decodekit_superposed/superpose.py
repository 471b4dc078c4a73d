"""The two rules of Superposed Decoding (Shen et al. 2024), as small pure functions.

One step for ``m <= k`` live drafts ``d`` with scores ``s_d`` (accumulated log scores) and last
tokens ``t_d``:

1. **Superposition.** Weights ``w = softmax(s)`` (the drafts' normalised probabilities); the model
   is fed one input embedding ``e = sum_d w_d * E[t_d]`` (``E``: the input embedding matrix) and
   returns one next-token distribution shared by all drafts.
2. **Expansion and filter.** Each draft takes the ``k`` most likely tokens ``T_d`` of that
   distribution (after its own masks; renormalised over ``T_d``), giving up to ``m * k``
   candidates scored ``s_d + (1 - alpha) * log p_llm(x | T_d) + alpha * log P_ng(x | d)``, where
   ``P_ng`` is the n-gram interpolation of :mod:`decodekit_superposed.ngram` over the draft's own
   tokens. The ``k`` best candidates that do not end in EOS are the next drafts; candidates that end
   in EOS and rank among the best ``k`` become finished sequences.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from decodekit_superposed.ngram import NGramModel


def superposition_weights(scores: torch.Tensor) -> torch.Tensor:
    """``[m]`` draft scores (log) -> ``[m]`` weights ``softmax(scores)`` (sum to 1)."""
    return torch.softmax(scores.double(), dim=0).to(torch.float32)


def superposed_embedding(embedding: torch.Tensor, tokens: list[int], weights: torch.Tensor) -> torch.Tensor:
    """``embedding [V, H]``, ``m`` tokens, ``weights [m]`` -> ``[H]``: ``sum_d w_d * E[t_d]``."""
    if len(tokens) != weights.shape[0]:
        raise ValueError(f"{len(tokens)} tokens but {weights.shape[0]} weights")
    rows = embedding[torch.tensor(tokens, device=embedding.device)].float()  # [m, H]
    return (weights.to(rows.device)[:, None] * rows).sum(dim=0)  # [H]


@dataclass(frozen=True)
class Candidate:
    """Draft ``draft`` extended by ``token``, with its new accumulated ``score``."""

    score: float
    draft: int
    token: int


def expand(logprobs: torch.Tensor, scores: list[float], contexts: list[list[int]], ngram: NGramModel,
           k: int, alpha: float, floor: float) -> list[Candidate]:
    """All candidates of one step, best first.

    ``logprobs [m, V]``: each draft's processed log-distribution (the shared superposed one, after
    the draft's own masks); ``scores``: the drafts' accumulated scores; ``contexts[d]``: draft ``d``'s
    tokens, prompt included (for the n-gram term). Ties keep draft order, then token rank.
    """
    m = logprobs.shape[0]
    out: list[Candidate] = []
    for d in range(m):
        finite = int(torch.isfinite(logprobs[d]).sum())
        top, idx = torch.topk(logprobs[d].double(), min(k, finite))  # [k'] log p', best first
        llm = top - torch.logsumexp(top, dim=0)  # renormalised over T_d: log p_llm(x | T_d)
        tokens = idx.tolist()
        ng = torch.tensor(ngram.interpolated(contexts[d], tokens, floor), dtype=torch.float64).log()
        total = scores[d] + (1.0 - alpha) * llm + alpha * ng  # [k']
        out.extend(Candidate(float(s), d, t) for s, t in zip(total.tolist(), tokens))
    return sorted(out, key=lambda c: -c.score)  # stable: ties keep (draft, rank) order


def select(candidates: list[Candidate], k: int, eos: set[int]) -> tuple[list[Candidate], list[Candidate]]:
    """(next drafts: the best ``k`` non-EOS candidates, finished: EOS candidates among the best ``k``)."""
    running = [c for c in candidates if c.token not in eos][:k]
    finished = [c for c in candidates[:k] if c.token in eos]
    return running, finished
