"""A second model pass that follows the generation: CFG's unconditional branch, CD's amateur.

:class:`Branch` keeps its own :class:`decodekit.kv.CachedLM` over the same ``B`` rows as the
target. Row ``b`` of the branch starts from its own context (a negative prompt, the last prompt
token, or the whole prompt for an amateur) and then sees every token row ``b`` commits::

    branch context of row b = start_ids[b] + generation.new_tokens(b)

Each target pass evaluates the branch over the *same* draft tree (``CachedLM.forward(pending,
drafts)``), so it yields logits at the root and at every draft node, ``[B, 1 + N, V]``. ``advance``
commits exactly what the host committed to the target (the pending tokens and the accepted draft
nodes, truncated as the host truncates at EOS / ``max_new_tokens``) and drops the rest, so the
branch never needs a rollback of its own.

:class:`WindowBranch` is the stateless alternative for an amateur that sees only the last ``n``
tokens: it recomputes ``n``-token windows, so it works at any position, a drafter's included.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, ContextManager

import torch

from decodekit.kv import CachedLM
from decodekit.types import Decision, Draft

if TYPE_CHECKING:  # pragma: no cover
    from decodekit.generation import Generation
    from decodekit.positions import Positions

DraftKey = tuple[tuple[tuple[int, ...], tuple[int, ...]] | None, ...]


def _draft_key(drafts: list[Draft | None]) -> DraftKey:
    return tuple(None if d is None else (tuple(d.tokens), tuple(d.parents)) for d in drafts)


class Branch:
    """The per-call state of one cached second pass (kept in ``generation.scratch``).

    * ``model``: the branch's model (the target itself for CFG); ``context`` an optional context
      manager factory wrapped around each forward (layer skipping).
    * ``start_ids[b]``: row ``b``'s initial context (at least one token).
    * ``lengths[b]``: how many tokens of ``generation.tokens[b]`` the branch has accounted for.
    """

    def __init__(self, model: torch.nn.Module, start_ids: list[list[int]], generation: Generation,
                 pad_token_id: int, context: Callable[[], ContextManager[Any]] | None = None):
        if len(start_ids) != generation.num_rows:
            raise ValueError(f"branch has {len(start_ids)} start contexts for {generation.num_rows} rows")
        if any(len(s) == 0 for s in start_ids):
            raise ValueError("every branch row needs at least one start token")
        self.lm = CachedLM(model, generation.num_rows, pad_token_id)
        self.context = context
        self.pending: list[list[int]] = [list(s) for s in start_ids]  # committed, not yet cached
        self.lengths = [len(t) for t in generation.tokens]
        self._step: tuple[DraftKey, torch.Tensor] | None = None  # this step's (drafts, logits)

    @torch.inference_mode()
    def logits(self, positions: Positions) -> torch.Tensor:
        """Branch logits ``[B, 1 + N, V]`` at the positions of a target pass (root + draft nodes).

        One forward per step: a second call with the same drafts returns the same tensor.
        """
        gen = positions.generation
        if positions.rows != list(range(gen.num_rows)):
            raise ValueError("the guidance branch evaluates target passes over all rows only; "
                             f"got positions for rows {positions.rows}")
        key = _draft_key(positions.drafts)
        if self._step is not None:
            if self._step[0] != key:
                raise RuntimeError("rescore called twice in one step with different drafts")
            return self._step[1]
        # A finished row commits nothing but CachedLM needs a token per row: re-feed its last one
        # (its output is ignored, exactly as the host does with its target cache).
        pending = [p if p else [gen.tokens[b][-1]] for b, p in enumerate(self.pending)]
        self.pending = pending
        if self.context is not None:
            with self.context():
                out = self.lm.forward(pending, list(positions.drafts))
        else:
            out = self.lm.forward(pending, list(positions.drafts))
        self._step = (key, out)
        return out

    def advance(self, generation: Generation, decision: Decision) -> None:
        """Commit what the host committed this step; queue the rest as pending tokens."""
        src = decision.source_rows
        old = self.lengths if src is None else [self.lengths[s] for s in src]
        appended = [generation.tokens[b][old[b]:] for b in range(generation.num_rows)]
        if self._step is not None:
            # As the engine commits its target: the accepted nodes the truncated row still holds.
            kept = [v.accepted[: max(0, len(a) - 1)] for v, a in zip(decision.verdicts, appended)]
            self.lm.commit(kept, src)
            self.pending = [a[len(k):] for a, k in zip(appended, kept)]
            self._step = None
        else:  # no forward this step (nothing asked for the branch): everything is still pending
            pend = self.pending if src is None else [self.pending[s] for s in src]
            if src is not None:
                self.lm.reorder(src)
            self.pending = [p + a for p, a in zip(pend, appended)]
        self.lengths = [len(t) for t in generation.tokens]


class WindowBranch:
    """An amateur that sees only the last ``window`` tokens of each prefix (no cache).

    For every real position ``(i, j)`` it feeds ``positions.prefix(i, j)[-window:]`` as a fresh
    sequence (position ids from 0) and keeps the last logits. All windows go in one batch,
    left-padded with an attention mask when some prefix is shorter than ``window``.
    """

    def __init__(self, model: torch.nn.Module, window: int, pad_token_id: int):
        if window < 1:
            raise ValueError(f"amateur_context must be >= 1, got {window}")
        self.model, self.window, self.pad_token_id = model, window, pad_token_id
        self.device = next(model.parameters()).device

    @torch.inference_mode()
    def logits(self, positions: Positions, vocab: int) -> torch.Tensor:
        """``[B', J, vocab]`` float32 logits; padding positions are zeros."""
        where = [(i, j) for i in range(len(positions)) for j in range(positions.length(i))]
        windows = [positions.prefix(i, j)[-self.window:] for i, j in where]
        W = max(len(w) for w in windows)
        ids = torch.full((len(windows), W), self.pad_token_id, dtype=torch.long)
        valid = torch.zeros((len(windows), W), dtype=torch.long)
        for k, w in enumerate(windows):
            ids[k, W - len(w):] = torch.tensor(w)
            valid[k, W - len(w):] = 1
        pos = (valid.cumsum(dim=1) - 1).clamp(min=0)  # [M, W]: 0 at each window's first real token
        attn = None if bool(valid.all()) else valid.to(self.device)
        out = self.model(input_ids=ids.to(self.device), position_ids=pos.to(self.device),
                         attention_mask=attn, use_cache=False, logits_to_keep=1)
        last = out.logits[:, -1, :].float()  # [M, V_ama]
        if last.shape[-1] != vocab:
            raise ValueError(f"the amateur's vocabulary ({last.shape[-1]}) differs from the expert's ({vocab})")
        full = torch.zeros((len(positions), positions.width, vocab), dtype=torch.float32, device=last.device)
        idx_i = torch.tensor([i for i, _ in where], device=last.device)
        idx_j = torch.tensor([j for _, j in where], device=last.device)
        full[idx_i, idx_j] = last
        return full
