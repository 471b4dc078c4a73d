"""Batched rollouts from the baseline model ρ_BL, sharing each row's committed prefix.

One call of :meth:`Rollouts.run` serves a whole rescore step: every query (a row and a position,
with its ``k`` candidate tokens) gets ``R`` rollouts per candidate, all ``N = Σ_q k_q · R`` of them
in one batched generation of at most ``H`` forward passes over a :class:`decodekit.kv.CachedLM`.

Prefix reuse. The object keeps one cache row per generation row holding (a prefix of) its
committed tokens. A step copies row ``b``'s cache into each of its ``k · R`` rollout rows
(``reorder``: an index-select of the KV tensors, no recomputation), feeds the uncached committed
tokens, the query's draft path and the candidate, then samples ``H`` tokens. Afterwards the first
copy of each row is rolled back to the row's committed tokens and the batch shrinks back to one
cache row per generation row: the prefix, now longer, is reused by the next step.

Rollout tokens are drawn from the baseline's logits processed exactly like a draft's
(``generation.process_draft``: the other plugins' rescorers and masks along the rollout's own path,
then the strategy's warpers), tempered by ``rollout_temperature``. Each query draws from its own
``torch.Generator`` seeded from (the row's seed, the query's prefix tokens), so runs repeat, a
batch matches its rows run one by one, and the same prefix reached through a draft gets the same
rollouts as through plain decoding.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Callable

import torch

from decodekit.kv import CachedLM


@dataclass
class Query:
    """One position to score: entry ``i`` / position ``j`` of the rescore call's logits."""

    entry: int
    pos: int
    row: int
    path: list[int]        # draft tokens between the committed text and this position
    generated: list[int]   # generated tokens before this position (committed + path)
    candidates: list[int]  # the top-k tokens z (k_q <= k of them)
    horizon: int           # rollout length H_q after the candidate (capped by the token budget)
    seed: int


def prefix_seed(row_seed: int, prefix: list[int]) -> int:
    """A 63-bit seed that depends only on the row's seed and the prefix tokens."""
    h = hashlib.blake2b(digest_size=8)
    h.update(int(row_seed).to_bytes(8, "little", signed=False))
    h.update(b"".join(int(t).to_bytes(4, "little", signed=False) for t in prefix))
    return int.from_bytes(h.digest(), "little") & ((1 << 63) - 1)


def sample(probs: torch.Tensor, temperature: float, generator: torch.Generator) -> torch.Tensor:
    """``probs [n, V]`` → ``[n]`` tokens from ``probs^(1/T)`` (normalised); argmax when ``T = 0``."""
    if temperature == 0:
        return probs.argmax(dim=-1)
    if temperature != 1.0:
        probs = torch.softmax(torch.log(probs) / temperature, dim=-1)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


class Rollouts:
    """Prefix-sharing batched rollouts for ``num_rows`` generation rows from ``model``."""

    def __init__(self, model: torch.nn.Module, num_rows: int, pad_token_id: int):
        self.lm = CachedLM(model, num_rows, pad_token_id)
        self.pad = pad_token_id
        self.cached = [0] * num_rows  # committed tokens of each row held by its cache row

    def reorder(self, source_rows: list[int]) -> None:
        """Beam search: row ``b`` continues row ``source_rows[b]``."""
        self.lm.reorder(source_rows)
        self.cached = [self.cached[s] for s in source_rows]

    @torch.inference_mode()
    def run(self, generation: Any, queries: list[Query], num_rollouts: int, temperature: float,
            on_tokens: Callable[[int], None] | None = None) -> list[list[int]]:
        """Rollout tokens for every (query, candidate, rollout), flat in that order.

        A rollout stops after ``query.horizon`` tokens or at an end-of-sequence token (kept); a
        candidate that is itself end-of-sequence gets an empty rollout.
        """
        gen, R = generation, num_rollouts
        eos = gen.limits.eos_token_ids
        src, qidx, paths, horizon = [], [], [], []
        for qi, q in enumerate(queries):
            for c in q.candidates:
                for _ in range(R):
                    src.append(q.row)
                    qidx.append(qi)
                    paths.append(q.path + [c])
                    horizon.append(0 if c in eos else q.horizon)
        out: list[list[int]] = [[] for _ in src]
        if not src or max(horizon) == 0:
            return out
        self._catch_up(gen)
        self.lm.reorder(src)  # [N] rows, each a copy of its generation row's prefix cache
        generators = [torch.Generator(device=self.lm.device).manual_seed(q.seed) for q in queries]
        pending = [gen.tokens[b][self.cached[b]:] + p for b, p in zip(src, paths)]
        active = [h > 0 for h in horizon]
        for _ in range(max(horizon)):
            act = [n for n in range(len(src)) if active[n]]
            if not act:
                break
            logits = self.lm.forward(pending)[:, 0]  # [N, V]: next-token logits of every rollout
            self.lm.commit([[] for _ in src])
            probs = gen.process_draft([src[n] for n in act], [paths[n] + out[n] for n in act],
                                      logits[act])  # [A, V]: processed ρ_BL
            tokens = self._draw(probs, [qidx[n] for n in act], temperature, generators)
            pending = [[self.pad] for _ in src]  # finished rollouts idle on a padding token
            for n, t in zip(act, tokens):
                out[n].append(t)
                pending[n] = [t]
                active[n] = len(out[n]) < horizon[n] and t not in eos
            if on_tokens is not None:
                on_tokens(len(act))
        self._restore(gen, src)
        return out

    def _draw(self, probs: torch.Tensor, owners: list[int], temperature: float,
              generators: list[torch.Generator]) -> list[int]:
        """One token per row of ``probs [A, V]``, each query's rows from the query's generator."""
        tokens = [0] * len(owners)
        by_query: dict[int, list[int]] = {}
        for a, qi in enumerate(owners):
            by_query.setdefault(qi, []).append(a)
        for qi, idx in by_query.items():
            drawn = sample(probs[idx], temperature, generators[qi]).tolist()
            for a, t in zip(idx, drawn):
                tokens[a] = int(t)
        return tokens

    def _catch_up(self, gen: Any) -> None:
        """Cache each row's committed tokens once before copying it ``k · R`` times (prefill)."""
        pend = [[] if done else t[c:] for t, c, done in zip(gen.tokens, self.cached, gen.done)]
        if max(len(p) for p in pend) <= 1:
            return  # one token per row: cheaper to feed it in the rollout batch
        self.lm.forward([p if p else [self.pad] for p in pend])
        self.lm.commit([[] for _ in pend])
        lengths = [len(t) if p else c for t, p, c in zip(gen.tokens, pend, self.cached)]
        self.lm.rollback(lengths)  # drops the padding token fed to rows with nothing pending
        self.cached = lengths

    def _restore(self, gen: Any, src: list[int]) -> None:
        """Back to one cache row per generation row, holding its committed tokens."""
        first: dict[int, int] = {}
        for n, b in enumerate(src):
            first.setdefault(b, n)
        B = gen.num_rows
        self.lm.reorder([first.get(b, 0) for b in range(B)])
        # rows without a rollout this step got a copy of another row: empty them (re-prefilled later)
        lengths = [len(gen.tokens[b]) if b in first else 0 for b in range(B)]
        self.lm.rollback(lengths)
        self.cached = lengths
