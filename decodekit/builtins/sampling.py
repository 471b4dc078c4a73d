"""Built-in strategy ``sample``: temperature, top-k, top-p, min-p, then exact sampling over drafts.

The warpers follow HF transformers' order and definitions (``TemperatureLogitsWarper``,
``TopKLogitsWarper``, ``TopPLogitsWarper``, ``MinPLogitsWarper``), so the same logits give the same
distribution; tests compare them directly.
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field

from decodekit.hookspecs import hookimpl
from decodekit.types import Decision, Draft
from decodekit.verify import sample_verdict


class SampleOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    temperature: float = Field(1.0, gt=0, description="divide logits by this before softmax")
    top_k: int | None = Field(None, ge=1, description="keep the k most likely tokens")
    top_p: float | None = Field(None, gt=0, le=1, description="keep the smallest set with this much mass")
    min_p: float | None = Field(None, ge=0, le=1, description="drop tokens below min_p × the top probability")
    min_tokens_to_keep: int = Field(1, ge=1)


class Temperature:
    """``logits / T``. Example: ``Temperature(0.5)(torch.tensor([[1., 2.]]))`` → ``[[2., 4.]]``."""

    def __init__(self, temperature: float):
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0 (use strategy: greedy for T → 0), got {temperature}")
        self.temperature = temperature

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:  # [..., V] -> [..., V]
        return logits / self.temperature


class TopK:
    """Keep the ``k`` largest logits (ties at the k-th value kept); the rest become -inf."""

    def __init__(self, top_k: int, min_tokens_to_keep: int = 1):
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        self.k = max(top_k, min_tokens_to_keep)

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        k = min(self.k, logits.shape[-1])
        kth = torch.topk(logits, k, dim=-1).values[..., -1:]  # [..., 1]
        return logits.masked_fill(logits < kth, float("-inf"))


class TopP:
    """Nucleus: keep the most likely tokens whose cumulative probability reaches ``top_p``.

    As in HF: sort ascending, drop tokens whose ascending cumulative mass is <= 1 - top_p.
    """

    def __init__(self, top_p: float, min_tokens_to_keep: int = 1):
        if not 0 < top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        self.top_p, self.min_keep = top_p, min_tokens_to_keep

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        sorted_logits, order = torch.sort(logits, descending=False, dim=-1)
        cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        drop_sorted = cum <= (1 - self.top_p)
        drop_sorted[..., -self.min_keep:] = False
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        return logits.masked_fill(drop, float("-inf"))


class MinP:
    """Drop tokens whose probability is below ``min_p`` times the most likely token's."""

    def __init__(self, min_p: float, min_tokens_to_keep: int = 1):
        if not 0 <= min_p <= 1:
            raise ValueError(f"min_p must be in [0, 1], got {min_p}")
        self.min_p, self.min_keep = min_p, min_tokens_to_keep

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        probs = logits.softmax(dim=-1)
        threshold = self.min_p * probs.amax(dim=-1, keepdim=True)
        drop = probs < threshold
        # never drop the min_keep most likely tokens
        keep_idx = torch.topk(probs, self.min_keep, dim=-1).indices
        drop = drop.scatter(-1, keep_idx, False)
        return logits.masked_fill(drop, float("-inf"))


def warpers(o: SampleOptions) -> list:
    ws: list = []
    if o.temperature != 1.0:
        ws.append(Temperature(o.temperature))
    if o.top_k is not None:
        ws.append(TopK(o.top_k, o.min_tokens_to_keep))
    if o.top_p is not None and o.top_p < 1.0:
        ws.append(TopP(o.top_p, o.min_tokens_to_keep))
    if o.min_p is not None and o.min_p > 0:
        ws.append(MinP(o.min_p, o.min_tokens_to_keep))
    return ws


class Sample:
    """Sample from p' (after the warpers); with a draft, recursive rejection sampling."""

    def __init__(self, options: SampleOptions | None = None, pipeline: object = None):
        self.options = options or SampleOptions()
        self.warpers = warpers(self.options)

    @hookimpl
    def warp(self, logits: torch.Tensor) -> torch.Tensor:
        for w in self.warpers:
            logits = w(logits)
        return logits

    @hookimpl
    def verify(self, generation, drafts: list[Draft | None], logprobs: torch.Tensor) -> Decision:
        return Decision([
            sample_verdict(d, logprobs[b], generation.generators[b]) for b, d in enumerate(drafts)
        ])


@hookimpl
def register_plugins(register):
    register("sample", Sample, options=SampleOptions, kind="strategy",
             description="ancestral sampling with temperature / top-k / top-p / min-p")
