"""A drafter that runs a causal LM of its own (a small model, or the target with layers skipped).

Per call it keeps a :class:`decodekit.kv.CachedLM` over the same rows as the target. Each step:

1. catch up: feed each row the committed tokens its cache lacks;
2. draft autoregressively, one forward per draft token, each token drawn from the *processed*
   draft distribution ``q' = generation.process_draft(rows, paths, logits)`` (the pipeline's
   rescorers, masks and warpers, evaluated along the draft's own path): the argmax under greedy
   decoding, a sample (with the row's generator) otherwise, ``Draft.q`` holding ``q'``;
3. a row stops when its ``q'`` top-1 probability falls below ``threshold`` or at its planned length;
4. after verify, :meth:`ModelDrafter.commit` rolls each row's cache back to the longest prefix of
   what the row really committed (``CachedLM.rollback``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from decodekit.generation import Generation
from decodekit.kv import CachedLM
from decodekit.types import Decision, Draft


@dataclass
class DrafterState:
    """Per-call: the drafter's cache and, per row, how many committed tokens it holds."""

    lm: CachedLM
    cached: list[int]   # committed tokens of row b held in lm's cache
    fed: list[int]      # draft tokens of the last step fed to lm (held after `cached`)


class ModelDrafter:
    """Drafts with ``model`` (logits width adapted to the target's ``vocab_size``)."""

    def __init__(self, model: torch.nn.Module, vocab_size: int, pad_token_id: int):
        self.model = model
        self.vocab_size = vocab_size
        self.pad_token_id = pad_token_id

    def start(self, gen: Generation) -> DrafterState:
        return DrafterState(CachedLM(self.model, gen.num_rows, self.pad_token_id),
                            [0] * gen.num_rows, [0] * gen.num_rows)

    def _fit(self, logits: torch.Tensor) -> torch.Tensor:
        """``[n, V_d]`` drafter logits → ``[n, V]``: pad with -inf or drop the extra columns."""
        V, Vd = self.vocab_size, logits.shape[-1]
        if Vd == V:
            return logits
        if Vd > V:
            return logits[:, :V]
        pad = torch.full((logits.shape[0], V - Vd), float("-inf"), device=logits.device, dtype=logits.dtype)
        return torch.cat([logits, pad], dim=-1)

    @torch.inference_mode()
    def draft(self, gen: Generation, st: DrafterState, lengths: list[int], threshold: float,
              sample: bool) -> tuple[list[Draft | None], int, float]:
        """Draft up to ``lengths[b]`` tokens per row (0: no draft for that row).

        Returns the drafts, the number of drafter forwards run, and their total seconds.
        """
        B = gen.num_rows
        t0 = time.perf_counter()
        # pending[b]: committed tokens not in the cache yet; a finished row gets its last token
        # again (its cache is never read), since every row of a forward needs one
        pending = [gen.tokens[b][st.cached[b]:] or [gen.tokens[b][-1]] for b in range(B)]
        st.fed = [0] * B
        active = [b for b in range(B) if lengths[b] > 0 and not gen.done[b]]
        if not active:  # nothing to draft: catch up later, in the next step that drafts
            return [None] * B, 0, 0.0
        drafted: dict[int, list[int]] = {b: [] for b in active}
        qs: dict[int, list[torch.Tensor]] = {b: [] for b in active}
        steps = 0
        while True:
            logits = st.lm.forward(pending)[:, -1, :]  # [B, V_d]: next-token logits of every row
            st.lm.commit([[] for _ in range(B)])
            steps += 1
            for b in range(B):
                if steps == 1:
                    st.cached[b] += len(pending[b])  # the catch-up tokens are committed text
                else:
                    st.fed[b] += 1                   # one more (draft) token behind them
            if not active:
                break
            rows = active
            q = gen.process_draft(rows, [drafted[b] for b in rows], self._fit(logits[rows]))  # [n, V]
            top_p, top_tok = q.max(dim=-1)
            still = []
            for i, b in enumerate(rows):
                if float(top_p[i]) < threshold:
                    continue  # this row stops drafting: its next token is too uncertain
                if sample:
                    tok = int(torch.multinomial(q[i], 1, generator=gen.generators[b]))
                else:
                    tok = int(top_tok[i])
                drafted[b].append(tok)
                qs[b].append(q[i])
                if len(drafted[b]) < lengths[b]:
                    still.append(b)
            active = still
            if not active:
                break
            pending = [[drafted[b][-1]] if b in drafted and drafted[b] else [gen.tokens[b][-1]] for b in range(B)]
        drafts: list[Draft | None] = [None] * B
        for b, toks in drafted.items():
            if toks:
                drafts[b] = Draft.chain(toks, torch.stack(qs[b]) if sample else None)
        return drafts, steps, time.perf_counter() - t0

    def commit(self, gen: Generation, st: DrafterState, drafts: list[Draft | None], decision: Decision) -> None:
        """Roll every row back to the drafted tokens it really committed (a prefix of its draft)."""
        keep = []
        for b, (d, v) in enumerate(zip(drafts, decision.verdicts)):
            ok = len(v.accepted) if d is not None else 0
            # fed tokens are this row's draft tokens only while it was still drafting; tokens fed
            # to a row after it stopped (or without a draft) are not its text
            n_own = min(st.fed[b], len(d) if d is not None else 0)
            # (a row truncated at EOS / max_new_tokens is done: just keep one token pending)
            keep.append(min(st.cached[b] + min(ok, n_own), len(gen.tokens[b]) - 1))
        st.lm.rollback(keep)
        st.cached = keep
        st.fed = [0] * len(keep)
