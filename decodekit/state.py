"""Per-sequence plugin state as a value: ``next_state = plugin.next_state(state, token)``.

A plugin whose per-row state is a function of the tokens (a grammar's parser state, a momentum
graph, a diversity history) subclasses :class:`TokenState`. The host then owns the state:

* it calls ``initial_state(prompt_ids)`` once per row at the start of a call;
* inside a step it computes the state at every draft position by walking the draft from the
  committed state (``positions.states(self)``), without committing anything;
* after verify it commits by walking the accepted tokens, and for beam search it reorders rows.

So no plugin re-implements fork, rollback or reordering. States must be treated as immutable
values: ``next_state`` returns a new value and never mutates its argument (share structure
freely: a tuple, a frozenset, an integer automaton state, a persistent linked list).
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar

S = TypeVar("S")


class TokenState(Generic[S]):
    """Mixin for plugins with a per-row state that a token turns into the next state."""

    def initial_state(self, prompt_ids: list[int]) -> S:
        """The state after the prompt (``prompt_ids``: the row's prompt token ids)."""
        raise NotImplementedError

    def next_state(self, state: S, token: int) -> S:
        """The state after ``token``; must not mutate ``state``."""
        raise NotImplementedError


def walk(plugin: TokenState[Any], state: Any, tokens: list[int]) -> Any:
    """Apply ``plugin.next_state`` along ``tokens``."""
    for t in tokens:
        state = plugin.next_state(state, t)
    return state
