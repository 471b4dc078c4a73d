"""Token recycling (Luo et al., "Turning Trash into Treasure"): drafts from an adjacency matrix.

``M [V, k]`` holds, for each token ``t``, the ``k`` most likely next tokens the target gave the
last time it scored a position right after ``t`` (``-1`` = never seen). Every target pass scores
the root and every draft node, so each pass refreshes up to ``1 + N`` rows of ``M`` for free,
rejected nodes included: the "trash" that is recycled.

A draft comes from a *candidate tree* of ``(parent, rank)`` pairs instantiated breadth-first
(:meth:`AdjacencyMatrix.instantiate`): a node of rank ``r`` under a node holding token ``t``
holds ``M[t, r]``; the root's children follow the row's last committed token. A node whose
parent token has no row in ``M`` yet is missing, and so is its subtree. Siblings hold distinct
tokens (distinct top-k entries), which recursive rejection sampling with one-hot q needs. Which
part of the candidate tree is drafted is planned from each node's value counted in hindsight
(hindsight.py), drafted or not.

Two ways to have a row for more tokens sooner (both only change which drafts are proposed):

* **The prompt's scores** (:meth:`AdjacencyMatrix.update` from the prefill): the target's pass
  over the prompt computes a hidden state at every prompt position; the plugin puts them through
  the LM head once and fills the rows of every prompt token, so a reply that reuses the prompt's
  words drafts from the first step.
* **A fallback root**: a token first met as verify's bonus token has no row yet, and the step
  would draft nothing. The root's children are then the ``k`` tokens committed most often so far
  (:meth:`AdjacencyMatrix.fallback`, a unigram count over every call), and deeper nodes follow
  ``M`` as usual. Such "cold" candidate trees are counted apart from the others.

The matrix and the counts persist across calls of the same pipeline on purpose (as in the paper):
what one answer taught about the target's next-token candidates helps the next answer.
"""

from __future__ import annotations

import weakref

import torch

from decodekit import reductions

PROMPT_CHUNK = 256  # prompt positions per LM-head product when recycling the prompt's scores


class AdjacencyMatrix:
    """``M [V, k]`` long tensor on the CPU; ``update`` from scored positions, ``draft`` a tree."""

    def __init__(self, vocab_size: int, k: int):
        self.k = min(k, vocab_size)
        self.M = torch.full((vocab_size, self.k), -1, dtype=torch.long)
        self.counts = torch.zeros(vocab_size, dtype=torch.float64)  # [V] committed tokens, every call
        self._fallback: list[int] | None = None                      # cached top-k of counts

    def has_row(self, token: int) -> bool:
        return int(self.M[token, 0]) >= 0

    def count(self, tokens: list[int]) -> None:
        """Add committed ``tokens`` to the unigram counts behind :meth:`fallback`."""
        if not tokens:
            return
        self.counts.index_add_(0, torch.tensor(tokens), torch.ones(len(tokens), dtype=torch.float64))
        if self._fallback is not None:
            # counts only grow, so a token outside the top k can enter it only by being counted
            # now: the new top k is among the old one and these tokens (no scan of the vocabulary)
            pool = sorted(set(self._fallback) | set(tokens))
            counts = self.counts[pool].tolist()
            ranked = sorted(range(len(pool)), key=lambda i: (-counts[i], pool[i]))  # ties: lower id first
            self._fallback = [pool[i] for i in ranked[:self.k]]

    def fallback(self) -> list[int] | None:
        """The ``k`` tokens committed most often (ties: lower id first), or None before ``k`` distinct
        tokens were committed."""
        if self._fallback is None and int((self.counts > 0).sum()) >= self.k:
            V = self.counts.shape[0]
            key = self.counts * V + torch.arange(V - 1, -1, -1, dtype=torch.float64)  # ties: lower id first
            self._fallback = torch.topk(key, self.k).indices.tolist()
        return self._fallback

    def update(self, prev_tokens: torch.Tensor, logits: torch.Tensor) -> None:
        """``prev_tokens [n]``: the token before each scored position; ``logits [n, V]`` there."""
        if prev_tokens.numel() == 0:
            return
        top = reductions.topk(logits.float(), self.k)[1].cpu()  # [n, k]
        self.M[prev_tokens.cpu()] = top

    def instantiate(self, last_token: int, template: list[tuple[int, int]], root: list[int] | None = None
                    ) -> list[int]:
        """The token of every ``(parent, rank)`` node of ``template`` (parents first) after
        ``last_token``: ``M[parent's token, rank]``, ``M[last_token, rank]`` under the root; ``-1``
        where the parent's token has no row yet, and then for its subtree too.

        ``root``: candidates for the root's children instead of ``M[last_token]`` (a fallback)."""
        rows: dict[int, list[int]] = {}  # M's rows read so far, as lists (one read per token)
        tokens: list[int] = []
        for parent, rank in template:
            if parent == -1 and root is not None:
                tokens.append(root[rank])
                continue
            before = last_token if parent == -1 else tokens[parent]  # the token this node follows
            if before < 0:
                tokens.append(-1)
                continue
            if before not in rows:
                rows[before] = self.M[before].tolist()
            tokens.append(rows[before][rank])
        return tokens


class PrefillCapture:
    """A one-shot forward hook on the target's decoder (``model.get_decoder()``): keeps the final
    hidden states ``[B', S, d]`` (after the last norm: the LM head's input at every position) of
    the next forward through it, the prefill, then removes itself. ``close()`` removes it
    earlier; so does garbage collection (the hook holds a weak reference only)."""

    def __init__(self, model: torch.nn.Module):
        self.hidden: torch.Tensor | None = None
        me = weakref.ref(self)

        def hook(module, args, output):
            cap = me()
            if cap is not None:
                h = getattr(output, "last_hidden_state", None)
                cap.hidden = (h if h is not None else output[0]).detach()
                cap.close()

        self._handle = model.get_decoder().register_forward_hook(hook)
        self._finalizer = weakref.finalize(self, self._handle.remove)

    def take(self) -> torch.Tensor | None:
        h, self.hidden = self.hidden, None
        self.close()
        return h

    def close(self) -> None:
        self._finalizer()


@torch.inference_mode()
def recycle_prompt(matrix: AdjacencyMatrix, lm_head: torch.nn.Module, hidden: torch.Tensor,
                   prompts: list[list[int]], limit: int) -> None:
    """Fill ``matrix`` from the prefill: row ``b``'s prompt position ``i`` scored what follows
    ``prompts[b][i]``.

    ``hidden``: ``[B', S, d]`` final hidden states of the prefill, prompts left-padded to the
    longest (``P`` columns, as :class:`~decodekit.kv.CachedLM` lays them out) then the step's
    draft. The last prompt position is left out (the engine's own scores there reach the matrix
    through ``rescore``), and so is everything but the last ``limit`` positions of a prompt.
    """
    P = max(len(t) for t in prompts)
    prev, cols = [], []
    for b, toks in enumerate(prompts):
        first = max(0, len(toks) - 1 - limit)
        prev += toks[first:len(toks) - 1]
        cols += [(b, P - len(toks) + i) for i in range(first, len(toks) - 1)]
    for lo in range(0, len(cols), PROMPT_CHUNK):
        rows, at = zip(*cols[lo:lo + PROMPT_CHUNK])
        h = hidden[torch.tensor(rows), torch.tensor(at)]  # [n, d]
        matrix.update(torch.tensor(prev[lo:lo + PROMPT_CHUNK]), lm_head.forward(h))  # .forward: no hooks fire
