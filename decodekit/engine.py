"""The decoding loop. It knows hooks, never plugin names.

One step, for ``B`` rows::

    drafts   = propose(generation)                         first non-None, else no draft
    logits   = target.forward(pending, drafts)             [B, 1 + N, V], one pass (tree mask if a tree)
    logprobs = generation.process(positions, logits)       rescore → mask → warp → log-softmax
    decision = verify(generation, positions, drafts, logprobs)
    generation.commit(decision); target.commit(...)        keep pending + accepted, drop the rest
    advance(generation, decision)                          stateful plugins commit

``pending[b]`` holds the tokens row ``b`` has committed but the target has not cached yet: the
whole prompt at the first step (prefill is just a step), afterwards the one token verify drew.
"""

from __future__ import annotations

import time
from typing import Iterator

import torch

from decodekit.generation import Generation
from decodekit.kv import CachedLM
from decodekit.positions import Positions
from decodekit.types import Decision, Draft


@torch.inference_mode()
def run(generation: Generation, pad_token_id: int) -> Iterator[list[list[int]]]:
    """Run ``generation`` to the end, yielding after every step the tokens each row appended."""
    gen = generation
    hooks = gen.hooks
    start = time.perf_counter()
    hooks.each("start", generation=gen)
    gen._started = True
    # Rows 0..B-1 are the generation's; each attached branch adds B twin rows after them, which
    # follow their row in everything but the context (see Generation.attach_branch).
    B = gen.num_rows
    branches = list(gen._branches)
    copies = 1 + len(branches)
    target = CachedLM(gen.model, B * copies, pad_token_id)
    pending = [list(t) for t in gen.tokens] + [c for key in branches for c in gen._branches[key]]
    try:
        while not all(gen.done):
            drafts = _drafts(gen)
            logits = target.forward(pending, drafts * copies)  # [B * copies, 1 + N, V]
            if branches:
                gen._branch_logits = {key: logits[B * (k + 1):B * (k + 2)] for k, key in enumerate(branches)}
                logits = logits[:B]
            positions = Positions.for_drafts(gen, drafts)
            logprobs = gen.process(positions, logits)
            decision: Decision | None = hooks.first(
                "verify", generation=gen, positions=positions, drafts=drafts, logprobs=logprobs
            )
            if decision is None:
                raise RuntimeError("no plugin implements verify: the pipeline has no decoding strategy")
            active = [not d for d in gen.done]
            appended = gen.commit(decision, drafts)
            accepted = [v.accepted[: max(0, len(a) - 1)] for v, a in zip(decision.verdicts, appended)]
            src = decision.source_rows
            target.commit(accepted * copies, None if src is None else [B * k + s for k in range(copies) for s in src])
            _count(gen, drafts, appended, active)
            hooks.each("advance", generation=gen, decision=decision)
            pending = [[t[-1]] for t in gen.tokens] * copies
            yield appended
    finally:
        gen.stats.wall_time_s = time.perf_counter() - start


def _drafts(gen: Generation) -> list[Draft | None]:
    if not gen.hooks.has("propose"):
        return [None] * gen.num_rows
    drafts = gen.hooks.first("propose", generation=gen)
    if drafts is None:
        return [None] * gen.num_rows
    if len(drafts) != gen.num_rows:
        raise ValueError(f"propose returned {len(drafts)} drafts for {gen.num_rows} rows")
    return [None if (gen.done[b] or d is None or len(d) == 0) else d for b, d in enumerate(drafts)]


def _count(gen: Generation, drafts: list[Draft | None], appended: list[list[int]], active: list[bool]) -> None:
    s = gen.stats
    s.target_passes += 1
    s.row_passes += sum(active)
    s.new_tokens += sum(len(a) for a in appended)
    for d, a, act in zip(drafts, appended, active):
        if act and d is not None:
            s.drafted_tokens += len(d)
            s.accepted_draft_tokens += max(0, len(a) - 1)


@torch.inference_mode()
def run_to_end(generation: Generation, pad_token_id: int) -> None:
    for _ in run(generation, pad_token_id):
        pass
