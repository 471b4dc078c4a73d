"""Where each row of logits sits: the row, the committed tokens and the draft path to it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from decodekit.state import TokenState
from decodekit.types import Draft

if TYPE_CHECKING:  # pragma: no cover
    from decodekit.generation import Generation


class Positions:
    """Describes logits of shape ``[B', J, V]`` handed to ``rescore``/``mask``/``warp``/``verify``.

    * ``rows[i]``: the generation row that entry ``i`` belongs to.
    * ``paths[i][j]``: the draft tokens between row ``rows[i]``'s committed text and position
      ``j`` (``paths[i][0] == []``, the root). ``length(i) = len(paths[i])`` positions of entry
      ``i`` are real; the rest up to ``width`` are padding.
    * ``drafts[i]``: the draft behind entry ``i`` when the positions come from a target pass
      (None for plain steps and for a drafter's own positions).
    * ``is_draft``: True when the logits are a drafter's (see the hookspecs module docstring).
    """

    def __init__(self, generation: Generation, rows: list[int], paths: list[list[list[int]]],
                 *, is_draft: bool = False, drafts: list[Draft | None] | None = None):
        if len(rows) != len(paths):
            raise ValueError("one path list per row entry")
        self.generation = generation
        self.rows = rows
        self.paths = paths
        self.is_draft = is_draft
        self.drafts = drafts if drafts is not None else [None] * len(rows)
        self.width = max(len(p) for p in paths) if paths else 0
        self._states: dict[int, list[list[Any]]] = {}
        self._masks: list[tuple[str, torch.Tensor]] | None = None
        self._allowed: torch.Tensor | None = None

    @classmethod
    def for_drafts(cls, generation: Generation, drafts: list[Draft | None]) -> Positions:
        """Positions of a target pass: the root and every node of each row's draft."""
        paths = []
        for d in drafts:
            if d is None:
                paths.append([[]])
            else:
                paths.append([[]] + [[d.tokens[k] for k in d.path(i)] for i in range(len(d))])
        return cls(generation, list(range(len(drafts))), paths, drafts=list(drafts))

    def __len__(self) -> int:
        return len(self.rows)

    def length(self, i: int) -> int:
        return len(self.paths[i])

    def prefix(self, i: int, j: int) -> list[int]:
        """All tokens before position ``j`` of entry ``i``: prompt, generated text, draft path."""
        return self.generation.tokens[self.rows[i]] + self.paths[i][j]

    def generated(self, i: int, j: int) -> list[int]:
        """Like ``prefix`` but without the prompt."""
        row = self.rows[i]
        return self.generation.tokens[row][self.generation.prompt_lengths[row]:] + self.paths[i][j]

    def masks(self, logits: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
        """Every mask plugin's ``(name, bool [B', J, V])`` at these positions, computed once.

        Masks are pure functions of the positions (``logits`` only gives their shape and device),
        so a rescorer that must know the allowed tokens (a top-k over allowed tokens, guidance's
        plausible set) and the host's own masking share one evaluation per step.
        """
        if self._masks is None:
            hooks = self.generation.hooks
            self._masks = [(name, m.to(logits.device))
                           for name, m in hooks.each("mask", positions=self, logits=logits) if m is not None]
        return self._masks

    def allowed(self, logits: torch.Tensor) -> torch.Tensor | None:
        """The AND of every mask, bool ``[B', J, V]``, or None when no plugin masks.

        Rows that have already finished are left unrestricted (their output is ignored).
        """
        if self._allowed is None:
            masks = self.masks(logits)
            if not masks:
                return None
            allowed = masks[0][1]
            for _, m in masks[1:]:
                allowed = allowed & m
            finished = [i for i, row in enumerate(self.rows) if self.generation.done[row]]
            if finished:
                allowed = allowed.clone()
                allowed[finished] = True
            self._allowed = allowed
        return self._allowed

    def states(self, plugin: TokenState[Any]) -> list[list[Any]]:
        """``states[i][j]``: ``plugin``'s state at position ``j`` of entry ``i`` (real positions only).

        Computed from the committed state by walking each draft path once (shared prefixes are
        walked once); nothing is committed.
        """
        key = id(plugin)
        if key not in self._states:
            out = []
            for i, row in enumerate(self.rows):
                root = self.generation.state_of(plugin, row)
                memo: dict[tuple[int, ...], Any] = {(): root}
                per_pos = []
                for path in self.paths[i]:
                    per_pos.append(_state_at(plugin, memo, tuple(path)))
                out.append(per_pos)
            self._states[key] = out
        return self._states[key]


def _state_at(plugin: TokenState[Any], memo: dict[tuple[int, ...], Any], path: tuple[int, ...]) -> Any:
    if path in memo:
        return memo[path]
    state = plugin.next_state(_state_at(plugin, memo, path[:-1]), path[-1])
    memo[path] = state
    return state
