"""Diversity terms: how much a group's scores drop for what earlier groups chose at this step.

A term maps the tokens already chosen this step by the beams of earlier groups to a penalty per
vocabulary entry. ``DIVERSITY_TERMS`` names them for the ``diversity`` option; a new term (e.g. an
n-gram or embedding diversity) is one more function with the same signature.
"""

from __future__ import annotations

from typing import Callable

import torch


def hamming_penalty(previous: torch.Tensor, vocab_size: int, penalty: float) -> torch.Tensor:
    """Hamming diversity (Vijayakumar et al.): ``λ · count(earlier beams that chose v)``.

    ``previous``: ``[P, m]`` long, the tokens the ``m`` beams of earlier groups chose this step, per
    prompt. Returns ``[P, V]`` float32: ``penalty * bincount(previous[p], minlength=V)``; the caller
    subtracts it from every beam of the group (after log-softmax, as HF does).
    """
    counts = torch.stack([torch.bincount(row, minlength=vocab_size) for row in previous])  # [P, V] int64
    return penalty * counts  # int64 * float -> float32


DiversityTerm = Callable[[torch.Tensor, int, float], torch.Tensor]
DIVERSITY_TERMS: dict[str, DiversityTerm] = {"hamming": hamming_penalty}
