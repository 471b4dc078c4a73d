"""The narrow interface every grammar engine sits behind.

A compiled constraint is an :class:`Automaton` over the model's byte vocabulary. Its states are
immutable values (an int, or an object nobody mutates after creation), so the host can fork them
along drafts and keep only the committed one.

* ``initial()``: the state before any generated token.
* ``step(state, token)``: the state after ``token``, or None when the constraint rejects it.
* ``allowed(state)``: numpy bool ``[vocab.size]``, the tokens ``step`` accepts (EOS excluded:
  the plugin adds the pipeline's EOS ids when ``accepting(state)``).
* ``accepting(state)``: True when the text so far is a complete match (EOS may follow).
* ``forced(state)``, ``accepts(state, tokens)``: tokens that must come next; whether a sequence
  may (used by closing walks; a backend overrides them where its engine answers faster).
* ``allowed_row(state, width)``: ``allowed(state)`` cut or padded with False to ``width`` (the
  logits' width), as a new array the caller owns. A backend overrides it when it can build the
  row without going through ``allowed`` (llguidance unpacks its bitmask straight to ``width``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import numpy as np


class Automaton(ABC):
    backend: str = ""

    def __init__(self, description: str):
        self.description = description  # e.g. "regex '[0-9]+'": used in error messages

    @abstractmethod
    def initial(self) -> Any: ...

    @abstractmethod
    def step(self, state: Any, token: int) -> Any | None: ...

    @abstractmethod
    def allowed(self, state: Any) -> np.ndarray: ...

    @abstractmethod
    def accepting(self, state: Any) -> bool: ...

    def forced(self, state: Any) -> list[int]:
        """Tokens that must come next, whatever is generated (a JSON key the grammar fixes, a
        literal), in the engine's own tokenization; empty when the engine does not know."""
        return []

    def accepts(self, state: Any, tokens: list[int]) -> bool:
        """Whether ``tokens`` may come next, one after the other, from ``state``."""
        for t in tokens:
            state = self.step(state, t)
            if state is None:
                return False
        return True

    def allowed_row(self, state: Any, width: int) -> np.ndarray:
        mask = self.allowed(state)
        row = np.zeros(width, dtype=bool)
        n = min(width, mask.shape[0])
        row[:n] = mask[:n]
        return row
